"""The SQL hook: active only inside a profiled request, and only in its own thread."""

from __future__ import annotations

import threading

from request_profiler import record_sql, sql_capture_active
from request_profiler.sql import MAX_STATEMENT_CHARS, MAX_STATEMENTS
from werkzeug.test import Client

from .helpers import hello_app, run, stored


def querying_app(queries: list[tuple[str, float]], seen: list[bool] | None = None):
    """An app whose data layer reports ``queries`` the way the contract says."""

    def app(environ, start_response):
        if seen is not None:
            seen.append(sql_capture_active())
        if sql_capture_active():
            for statement, seconds in queries:
                record_sql(statement, seconds)
        return hello_app(environ, start_response)

    return app


def test_outside_a_profiled_request_the_hook_is_off() -> None:
    assert sql_capture_active() is False
    record_sql("SELECT 1", 0.1)  # a no-op, not an error


def test_queries_of_a_profiled_request_are_listed_with_it(
    make_middleware, store_dir, token
) -> None:
    seen: list[bool] = []
    app = querying_app(
        [("SELECT * FROM episodes WHERE number < %s", 0.002), ("SELECT 1", 0.0005)], seen
    )

    run(make_middleware(app), headers={"X-Profile-Token": token})

    [meta] = stored(store_dir)
    assert seen == [True]
    assert meta["sql"] == [["SELECT * FROM episodes WHERE number < %s", 2.0], ["SELECT 1", 0.5]]
    assert (meta["sql_count"], meta["sql_ms"]) == (2, 2.5)
    assert sql_capture_active() is False  # over with the request


def test_queries_made_while_the_body_streams_are_captured(
    make_middleware, store_dir, token
) -> None:
    def streaming_app(environ, start_response):
        start_response("200 OK", [])
        for number in range(3):
            record_sql(f"SELECT {number}", 0.001)
            yield b"row"

    run(make_middleware(streaming_app), headers={"X-Profile-Token": token})

    assert [statement for statement, _ in stored(store_dir)[0]["sql"]] == [
        "SELECT 0",
        "SELECT 1",
        "SELECT 2",
    ]


def test_unprofiled_requests_see_the_hook_off(make_middleware, store_dir) -> None:
    seen: list[bool] = []
    run(make_middleware(querying_app([], seen)))

    assert seen == [False]


def test_a_request_in_another_thread_does_not_record_into_the_profile(
    make_middleware, store_dir, token
) -> None:
    other_thread_saw: list[bool] = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/profiled":
            neighbour = threading.Thread(target=run, args=(middleware, "/neighbour"))
            neighbour.start()
            neighbour.join()
            record_sql("SELECT mine", 0.001)
        else:
            other_thread_saw.append(sql_capture_active())
            record_sql("SELECT not mine", 0.001)
        return hello_app(environ, start_response)

    middleware = make_middleware(app)
    run(middleware, "/profiled", headers={"X-Profile-Token": token})

    assert other_thread_saw == [False]
    assert [statement for statement, _ in stored(store_dir)[0]["sql"]] == ["SELECT mine"]


def test_statements_are_capped_but_all_are_counted(make_middleware, store_dir, token) -> None:
    queries = [("SELECT " + "x" * MAX_STATEMENT_CHARS, 0.001)] * (MAX_STATEMENTS + 10)

    run(make_middleware(querying_app(queries)), headers={"X-Profile-Token": token})

    [meta] = stored(store_dir)
    assert len(meta["sql"]) == MAX_STATEMENTS
    assert len(meta["sql"][0][0]) == MAX_STATEMENT_CHARS
    assert meta["sql_count"] == MAX_STATEMENTS + 10


def test_the_viewer_lists_the_queries_escaped(make_middleware, store_dir, token) -> None:
    middleware = make_middleware(
        querying_app([("SELECT title FROM episodes WHERE number < 3", 0.004)])
    )
    run(middleware, headers={"X-Profile-Token": token})

    page = Client(middleware).get(
        f"/_profiler/{stored(store_dir)[0]['id']}", headers={"X-Profile-Token": token}
    )

    assert "<code>SELECT title FROM episodes WHERE number &lt; 3</code>" in page.text
    assert "1 query, 4.0 ms" in page.text
