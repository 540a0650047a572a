"""Load from a separate process: wrk, or ab where wrk is missing.

    tool = find_tool()                       # "wrk", else "ab"; LoadToolMissing if neither
    result = run_load(tool, LoadSpec("http://127.0.0.1:8080/health", connections=32,
                                     threads=1, duration=5.0), workdir)
    result.requests_per_second, result.p99_ms, result.generator_saturated

Every run is bounded: the tool is told the duration and is killed if it
overruns it by :data:`GRACE_SECONDS`. The load generator's own CPU time is
measured from ``getrusage(RUSAGE_CHILDREN)`` around the run; when it used
(nearly) all of the CPU its threads can use, the result says the number is
the generator's ceiling rather than the server's.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: Seconds a tool may run past its duration before it is killed.
GRACE_SECONDS = 15.0
#: CPU used / (wall time × generator threads) at or above which the generator was the bottleneck.
SATURATION = 0.9
#: p99 above this multiple of p50 marks a run's tail as long (issue 14: workers recycling
#: together stalled every request for up to a second; a healthy run stays well under it).
TAIL_RATIO = 3.0

TOOLS = ("wrk", "ab")

# wrk's Lua hook that prints the summary as one JSON line: its text output
# rounds latencies and changes units; this keeps microseconds.
_WRK_REPORT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'LAB-JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


# Appended to the report script when each request searches another text: the texts in
# turn, each pass over them spelled differently (pass p upper-cases the letters whose bit
# is set in p). The search is the same words, the text is one the site has not been asked
# since it started, so it is never answered from its cache, however many workers share the
# load. Each thread takes its own passes.
_WRK_SEARCH_TEXTS = """\
local texts = {%(texts)s}
local prefix = "%(prefix)s"
local pass, index = 0, 0
local threads = {}

-- In wrk's own state: thread k of n starts on pass k and takes every n-th.
setup = function(thread)
  table.insert(threads, thread)
  thread:set("first_pass", #threads - 1)
  for _, each in ipairs(threads) do each:set("passes_apart", #threads) end
end

init = function(args)
  pass = first_pass or 0
end

local function spelled(text, pass)
  local letters, bit = {}, 1
  for i = 1, #text do
    local letter = text:sub(i, i)
    if letter ~= " " then
      if math.floor(pass / bit) %% 2 == 1 then letter = letter:upper() end
      bit = bit * 2
    end
    letters[i] = letter
  end
  return (table.concat(letters):gsub(" ", "+"))
end

request = function()
  index = index + 1
  if index > #texts then
    index, pass = 1, pass + (passes_apart or 1)
  end
  return wrk.format(nil, prefix .. spelled(texts[index], pass))
end
"""

#: What a search text may hold: the Lua script quotes them without escaping.
_SEARCH_TEXT = re.compile(r"[a-z0-9]+(?: [a-z0-9]+)*")


def search_query(text: str) -> str:
    """The query string the load script sends for ``text`` on its first pass."""
    return "q=" + text.replace(" ", "+")


class LoadError(RuntimeError):
    """The load generator could not run or its output could not be read."""


class LoadToolMissing(LoadError):
    """Neither wrk nor ab (or not the one asked for) is installed."""


@dataclass(frozen=True)
class LoadSpec:
    """One run of a load generator.

    :param url: the URL loaded, every request the same.
    :param connections: connections kept open, each with one request at a time.
    :param threads: the generator's threads (wrk's ``-t``; ab has one).
    :param duration: whole seconds.
    :param headers: sent with every request (conditional requests, gzip).
    :param search_texts: if given, each request adds ``?q=`` and the next of these to the
        URL's path instead (lower-case words and spaces; wrk only), spelled differently
        on each pass over them so that none is answered from the site's cache.
    """

    url: str
    connections: int
    threads: int
    duration: int
    headers: dict[str, str] = field(default_factory=dict)
    search_texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadResult:
    tool: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    #: Connection, read, write and timeout errors.
    errors: int
    #: Responses the tool counts as failed by status: wrk counts non-2xx/3xx, ab non-2xx.
    bad_status: int
    bytes: int
    #: The generator's user+system CPU seconds over the run.
    cpu_seconds: float
    threads: int

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def generator_cpu_share(self) -> float:
        """How much of the CPU its threads could use the load generator used (0–1)."""
        return self.cpu_seconds / (self.seconds * self.threads) if self.seconds else 0.0

    @property
    def generator_saturated(self) -> bool:
        return self.generator_cpu_share >= SATURATION

    @property
    def tail_ratio(self) -> float:
        """p99 over p50: how far the slowest 1% are from the typical request."""
        return self.p99_ms / self.p50_ms if self.p50_ms else 0.0

    @property
    def long_tail(self) -> bool:
        return self.tail_ratio > TAIL_RATIO

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            requests_per_second=self.requests_per_second,
            generator_cpu_share=self.generator_cpu_share,
            generator_saturated=self.generator_saturated,
            tail_ratio=self.tail_ratio,
            long_tail=self.long_tail,
        )
        return data


def find_tool(preferred: str | None = None) -> str:
    """The load tool to use: ``preferred`` if given, else wrk, else ab."""
    candidates = (preferred,) if preferred else TOOLS
    for name in candidates:
        if shutil.which(name):
            return name
    wanted = preferred or "wrk or ab"
    raise LoadToolMissing(f"{wanted} is not installed (apt-get install wrk apache2-utils)")


def run_load(tool: str, spec: LoadSpec, workdir: Path) -> LoadResult:
    """Load ``spec.url`` for ``spec.duration`` s with ``tool``; ``workdir`` holds its script."""
    if tool == "wrk":
        script = workdir / "lab-report.lua"
        script.write_text(_WRK_REPORT + _search_script(spec))
        command = [
            "wrk",
            "--latency",
            "-t",
            str(spec.threads),
            "-c",
            str(max(spec.connections, spec.threads)),
            "-d",
            f"{spec.duration}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
        ]
        for name, value in spec.headers.items():
            command += ["-H", f"{name}: {value}"]
        output, cpu_seconds = _run(command + [spec.url], spec.duration)
        return parse_wrk(output, cpu_seconds, spec.threads)
    if tool == "ab":
        if spec.search_texts:
            raise LoadError("each request searching another text needs wrk (ab sends one URL)")
        # -n caps the count; -t is what bounds the run. -k keeps connections alive, as wrk does.
        command = [
            "ab",
            "-q",
            "-k",
            "-r",
            "-s",
            "5",
            "-n",
            "50000000",
            "-c",
            str(spec.connections),
            "-t",
            str(spec.duration),
        ]
        for name, value in spec.headers.items():
            command += ["-H", f"{name}: {value}"]
        output, cpu_seconds = _run(command + [spec.url], spec.duration)
        return parse_ab(output, cpu_seconds)
    raise LoadError(f"unknown load tool {tool!r} (known: {', '.join(TOOLS)})")


def _search_script(spec: LoadSpec) -> str:
    """The part of wrk's script that makes each request search another text ("" if none)."""
    if not spec.search_texts:
        return ""
    bad = [text for text in spec.search_texts if not _SEARCH_TEXT.fullmatch(text)]
    if bad:
        raise LoadError(f"search texts are lower-case words and single spaces, not {bad[0]!r}")
    path = urlsplit(spec.url).path
    return _WRK_SEARCH_TEXTS % {
        "texts": ", ".join(f'"{text}"' for text in spec.search_texts),
        "prefix": f"{path}?q=",
    }


def _run(command: list[str], duration: float) -> tuple[str, float]:
    # Only the tool is reaped while this runs, so the children's usage delta is its own.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + GRACE_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise LoadError(
            f"{command[0]} ran past {duration + GRACE_SECONDS:.0f}s and was killed"
        ) from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        last_line = detail[-1] if detail else "no output"
        raise LoadError(f"{command[0]} failed (exit {completed.returncode}): {last_line}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return completed.stdout, cpu


def parse_wrk(output: str, cpu_seconds: float, threads: int) -> LoadResult:
    """A :class:`LoadResult` from wrk's output with the ``LAB-JSON`` line of its report script."""
    line = next((line for line in output.splitlines() if line.startswith("LAB-JSON ")), None)
    if line is None:
        raise LoadError("wrk printed no summary (was its Lua report script run?)")
    data = json.loads(line.removeprefix("LAB-JSON "))
    return LoadResult(
        tool="wrk",
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        bad_status=data["status"],
        bytes=data["bytes"],
        cpu_seconds=cpu_seconds,
        threads=threads,
    )


def _ab_number(output: str, label: str, default: float | None = None) -> float:
    match = re.search(rf"^{re.escape(label)}:\s+([\d.]+)", output, re.MULTILINE)
    if match is None:
        if default is None:
            raise LoadError(f"ab's output has no {label!r} line")
        return default
    return float(match.group(1))


def _ab_percentile(output: str, percent: int) -> float:
    match = re.search(rf"^\s*{percent}%\s+(\d+)", output, re.MULTILINE)
    if match is None:
        raise LoadError(f"ab's output has no {percent}% latency")
    return float(match.group(1))


def _ab_errors(output: str) -> int:
    """ab's failed requests less those it counts for a length unlike the first response's:
    a page that varies (a profile page) is not an error. wrk counts no such thing."""
    failed = int(_ab_number(output, "Failed requests"))
    match = re.search(r"\(Connect: \d+, Receive: \d+, Length: (\d+), Exceptions: \d+\)", output)
    return failed - int(match.group(1)) if match else failed


def parse_ab(output: str, cpu_seconds: float) -> LoadResult:
    """A :class:`LoadResult` from ``ab``'s text report (latencies are whole milliseconds)."""
    return LoadResult(
        tool="ab",
        requests=int(_ab_number(output, "Complete requests")),
        seconds=_ab_number(output, "Time taken for tests"),
        p50_ms=_ab_percentile(output, 50),
        p99_ms=_ab_percentile(output, 99),
        errors=_ab_errors(output),
        bad_status=int(_ab_number(output, "Non-2xx responses", default=0)),
        bytes=int(_ab_number(output, "Total transferred")),
        cpu_seconds=cpu_seconds,
        threads=1,
    )
