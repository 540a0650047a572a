-- SQLite schema. Every statement is idempotent: the embedded database creates
-- itself on first use, and `flask init-db` runs the same script. The app runs
-- it when a database's user_version is below the one set at the end, which is
-- how an existing database gets new tables and the current triggers.
PRAGMA foreign_keys = ON;
BEGIN IMMEDIATE;

CREATE TABLE IF NOT EXISTS episodes (
    id               INTEGER PRIMARY KEY,
    number           INTEGER NOT NULL UNIQUE,  -- the episode page, the API item
    guid             TEXT    NOT NULL UNIQUE,  -- the feed's item id: never changes
    slug             TEXT    NOT NULL,
    title            TEXT    NOT NULL,
    summary          TEXT    NOT NULL,
    show_notes       TEXT    NOT NULL,         -- HTML, written by the site's editors
    transcript       TEXT    NOT NULL,
    audio_url        TEXT    NOT NULL,
    audio_bytes      INTEGER NOT NULL,
    duration_seconds INTEGER NOT NULL,
    explicit         INTEGER NOT NULL DEFAULT 0,
    published_at     TEXT    NOT NULL,         -- UTC, ISO 8601
    updated_at       TEXT    NOT NULL
);
-- The home page's "latest episodes".
CREATE INDEX IF NOT EXISTS episodes_published_at ON episodes (published_at);

CREATE TABLE IF NOT EXISTS guests (
    id   INTEGER PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    bio  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS episode_guests (
    episode_id INTEGER NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    guest_id   INTEGER NOT NULL REFERENCES guests (id),
    PRIMARY KEY (episode_id, position),  -- an episode's guests, in billing order
    UNIQUE (episode_id, guest_id)
) WITHOUT ROWID;
-- Episodes by guest.
CREATE INDEX IF NOT EXISTS episode_guests_guest ON episode_guests (guest_id);

-- Chapter markers, for the episodes that have them (the show began marking
-- chapters later): the JSON chapters file podcast apps read, and the episode
-- page's list. One JSON array per episode, [{"startTime": 0, "title": "…"}, …]
-- as the JSON chapters format has it: chapters are written and read as a whole,
-- and a listing learns which episodes have them from a row each, parsing none.
CREATE TABLE IF NOT EXISTS episode_chapters (
    episode_id INTEGER PRIMARY KEY REFERENCES episodes (id) ON DELETE CASCADE,
    -- Whatever writes it, it is a JSON array: the pages and the chapters file parse it.
    chapters   TEXT NOT NULL CHECK (json_valid(chapters) AND json_type(chapters) = 'array')
);

-- One row that changes whenever published data does. The feed's ETag and
-- Last-Modified come from it, so a conditional GET costs one primary-key read
-- instead of a scan of the episodes; /health reads the count from it too.
CREATE TABLE IF NOT EXISTS site_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    version       INTEGER NOT NULL,
    changed_at    TEXT    NOT NULL,
    episode_count INTEGER NOT NULL
);
INSERT OR IGNORE INTO site_state (id, version, changed_at, episode_count)
VALUES (1, 0, strftime('%Y-%m-%d %H:%M:%f', 'now'), 0);

-- A token that changes with every change of the episode: anything its pages
-- show, guests included. A build of the static site re-renders an episode's
-- pages and fragments only when it moved, and so reads nothing else of an
-- unchanged episode. Random (63 bits), not a counter: builds compare tokens
-- for equality only, and no restored backup, rewound counter or number
-- reused by a new episode can make an old token stand for new content.
CREATE TABLE IF NOT EXISTS episode_revisions (
    episode_id INTEGER PRIMARY KEY REFERENCES episodes (id) ON DELETE CASCADE,
    revision   INTEGER NOT NULL
);
INSERT OR IGNORE INTO episode_revisions (episode_id, revision)
SELECT id, random() FROM episodes;

-- Full-text search over the episodes, kept in step by the triggers below.
CREATE VIRTUAL TABLE IF NOT EXISTS episodes_fts USING fts5 (
    title, summary, transcript,
    content = 'episodes', content_rowid = 'id', tokenize = 'porter unicode61'
);

-- Each trigger bumps site_state and draws a new revision for the episodes
-- the change shows on. An upsert, not INSERT OR REPLACE: a statement's own conflict clause
-- (UPDATE OR IGNORE ...) overrides OR REPLACE inside its triggers.
DROP TRIGGER IF EXISTS episodes_inserted;
CREATE TRIGGER episodes_inserted AFTER INSERT ON episodes BEGIN
    INSERT INTO episodes_fts (rowid, title, summary, transcript)
    VALUES (new.id, new.title, new.summary, new.transcript);
    UPDATE site_state SET version = version + 1, episode_count = episode_count + 1,
        changed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1;
    INSERT INTO episode_revisions (episode_id, revision)
    VALUES (new.id, random())
    ON CONFLICT (episode_id) DO UPDATE SET revision = excluded.revision;
END;

-- The episode's revision row goes with it (ON DELETE CASCADE).
DROP TRIGGER IF EXISTS episodes_deleted;
CREATE TRIGGER episodes_deleted AFTER DELETE ON episodes BEGIN
    INSERT INTO episodes_fts (episodes_fts, rowid, title, summary, transcript)
    VALUES ('delete', old.id, old.title, old.summary, old.transcript);
    UPDATE site_state SET version = version + 1, episode_count = episode_count - 1,
        changed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1;
END;

DROP TRIGGER IF EXISTS episodes_updated;
CREATE TRIGGER episodes_updated AFTER UPDATE ON episodes BEGIN
    INSERT INTO episodes_fts (episodes_fts, rowid, title, summary, transcript)
    VALUES ('delete', old.id, old.title, old.summary, old.transcript);
    INSERT INTO episodes_fts (rowid, title, summary, transcript)
    VALUES (new.id, new.title, new.summary, new.transcript);
    UPDATE site_state SET version = version + 1,
        changed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1;
    INSERT INTO episode_revisions (episode_id, revision)
    VALUES (new.id, random())
    ON CONFLICT (episode_id) DO UPDATE SET revision = excluded.revision;
END;

-- Guest names appear on pages and in the feed: renaming one is a change of
-- every episode they are on (found through episode_guests_guest).
DROP TRIGGER IF EXISTS guests_updated;
CREATE TRIGGER guests_updated AFTER UPDATE ON guests BEGIN
    UPDATE site_state SET version = version + 1,
        changed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1;
    UPDATE episode_revisions SET revision = random()
        WHERE episode_id IN (SELECT episode_id FROM episode_guests WHERE guest_id = new.id);
END;

DROP TRIGGER IF EXISTS episode_guests_inserted;
CREATE TRIGGER episode_guests_inserted AFTER INSERT ON episode_guests BEGIN
    UPDATE site_state SET version = version + 1,
        changed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1;
    UPDATE episode_revisions SET revision = random()
        WHERE episode_id = new.episode_id;
END;

DROP TRIGGER IF EXISTS episode_guests_deleted;
CREATE TRIGGER episode_guests_deleted AFTER DELETE ON episode_guests BEGIN
    UPDATE site_state SET version = version + 1,
        changed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1;
    UPDATE episode_revisions SET revision = random()
        WHERE episode_id = old.episode_id;
END;

DROP TRIGGER IF EXISTS episode_guests_updated;
CREATE TRIGGER episode_guests_updated AFTER UPDATE ON episode_guests BEGIN
    UPDATE site_state SET version = version + 1,
        changed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1;
    UPDATE episode_revisions SET revision = random()
        WHERE episode_id IN (old.episode_id, new.episode_id);
END;

-- Chapters show on the episode page, and whether an episode has any in the feed.
DROP TRIGGER IF EXISTS episode_chapters_inserted;
CREATE TRIGGER episode_chapters_inserted AFTER INSERT ON episode_chapters BEGIN
    UPDATE site_state SET version = version + 1,
        changed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1;
    UPDATE episode_revisions SET revision = random()
        WHERE episode_id = new.episode_id;
END;

DROP TRIGGER IF EXISTS episode_chapters_deleted;
CREATE TRIGGER episode_chapters_deleted AFTER DELETE ON episode_chapters BEGIN
    UPDATE site_state SET version = version + 1,
        changed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1;
    UPDATE episode_revisions SET revision = random()
        WHERE episode_id = old.episode_id;
END;

DROP TRIGGER IF EXISTS episode_chapters_updated;
CREATE TRIGGER episode_chapters_updated AFTER UPDATE ON episode_chapters BEGIN
    UPDATE site_state SET version = version + 1,
        changed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1;
    UPDATE episode_revisions SET revision = random()
        WHERE episode_id IN (old.episode_id, new.episode_id);
END;

COMMIT;
PRAGMA user_version = 4;
