-- PostgreSQL schema, run by `flask init-db`. Every statement is idempotent.
CREATE TABLE IF NOT EXISTS episodes (
    id               BIGSERIAL PRIMARY KEY,
    number           INTEGER     NOT NULL UNIQUE,  -- the episode page, the API item
    guid             TEXT        NOT NULL UNIQUE,  -- the feed's item id: never changes
    slug             TEXT        NOT NULL,
    title            TEXT        NOT NULL,
    summary          TEXT        NOT NULL,
    show_notes       TEXT        NOT NULL,         -- HTML, written by the site's editors
    transcript       TEXT        NOT NULL,
    audio_url        TEXT        NOT NULL,
    audio_bytes      BIGINT      NOT NULL,
    duration_seconds INTEGER     NOT NULL,
    explicit         BOOLEAN     NOT NULL DEFAULT FALSE,
    published_at     TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    -- Kept by PostgreSQL itself; the GIN index below makes /search an index lookup.
    search_vector    TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', summary), 'B')
        || setweight(to_tsvector('english', transcript), 'C')
    ) STORED
);
-- The home page's "latest episodes".
CREATE INDEX IF NOT EXISTS episodes_published_at ON episodes (published_at);
CREATE INDEX IF NOT EXISTS episodes_search ON episodes USING GIN (search_vector);

CREATE TABLE IF NOT EXISTS guests (
    id   BIGSERIAL PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    bio  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS episode_guests (
    episode_id BIGINT  NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    guest_id   BIGINT  NOT NULL REFERENCES guests (id),
    PRIMARY KEY (episode_id, position),  -- an episode's guests, in billing order
    UNIQUE (episode_id, guest_id)
);
-- Episodes by guest.
CREATE INDEX IF NOT EXISTS episode_guests_guest ON episode_guests (guest_id);

-- Chapter markers, for the episodes that have them (the show began marking
-- chapters later): the JSON chapters file podcast apps read, and the episode
-- page's list. One JSON array per episode, [{"startTime": 0, "title": "…"}, …]
-- as the JSON chapters format has it: chapters are written and read as a whole,
-- and a listing learns which episodes have them from a row each, parsing none.
CREATE TABLE IF NOT EXISTS episode_chapters (
    episode_id BIGINT  PRIMARY KEY REFERENCES episodes (id) ON DELETE CASCADE,
    -- Whatever writes it, it is a JSON array: the pages and the chapters file parse it.
    chapters   TEXT NOT NULL CHECK (jsonb_typeof(chapters::jsonb) = 'array')
);

-- One row that changes whenever published data does. The feed's ETag and
-- Last-Modified come from it, so a conditional GET costs one primary-key read
-- instead of a scan of the episodes; /health reads the count from it too.
CREATE TABLE IF NOT EXISTS site_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    version       BIGINT      NOT NULL,
    changed_at    TIMESTAMPTZ NOT NULL,
    episode_count INTEGER     NOT NULL
);
INSERT INTO site_state (id, version, changed_at, episode_count)
VALUES (1, 0, clock_timestamp(), 0) ON CONFLICT (id) DO NOTHING;

-- A token that changes with every change of the episode: anything its pages
-- show, guests included. A build of the static site re-renders an episode's
-- pages and fragments only when it moved, and so reads nothing else of an
-- unchanged episode. Random (63 bits), not a counter: builds compare tokens
-- for equality only, and no restored backup, rewound counter or number
-- reused by a new episode can make an old token stand for new content.
CREATE TABLE IF NOT EXISTS episode_revisions (
    episode_id BIGINT PRIMARY KEY REFERENCES episodes (id) ON DELETE CASCADE,
    revision   BIGINT NOT NULL
);
INSERT INTO episode_revisions (episode_id, revision)
SELECT id, floor(random() * 9.2e18)::bigint FROM episodes
ON CONFLICT (episode_id) DO NOTHING;

-- Bumps site_state, and draws a new revision for the episodes the change shows on.
CREATE OR REPLACE FUNCTION site_state_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    new_revision BIGINT := floor(random() * 9.2e18)::bigint;
BEGIN
    UPDATE site_state SET
        version = version + 1,
        changed_at = clock_timestamp(),
        episode_count = episode_count + CASE
            WHEN TG_TABLE_NAME <> 'episodes' THEN 0
            WHEN TG_OP = 'INSERT' THEN 1
            WHEN TG_OP = 'DELETE' THEN -1
            ELSE 0 END
    WHERE id = 1;
    IF TG_TABLE_NAME = 'episodes' AND TG_OP <> 'DELETE' THEN
        -- A deleted episode's row goes with it (ON DELETE CASCADE).
        INSERT INTO episode_revisions (episode_id, revision) VALUES (NEW.id, new_revision)
        ON CONFLICT (episode_id) DO UPDATE SET revision = EXCLUDED.revision;
    ELSIF TG_TABLE_NAME = 'guests' THEN
        -- Through the index episode_guests_guest.
        UPDATE episode_revisions SET revision = new_revision
        WHERE episode_id IN (SELECT episode_id FROM episode_guests WHERE guest_id = NEW.id);
    ELSIF TG_TABLE_NAME IN ('episode_guests', 'episode_chapters') THEN
        IF TG_OP <> 'DELETE' THEN
            UPDATE episode_revisions SET revision = new_revision WHERE episode_id = NEW.episode_id;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            UPDATE episode_revisions SET revision = new_revision WHERE episode_id = OLD.episode_id;
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER episodes_changed
    AFTER INSERT OR UPDATE OR DELETE ON episodes
    FOR EACH ROW EXECUTE FUNCTION site_state_changed();
-- Guest names appear on pages and in the feed: renaming one is a change too.
CREATE OR REPLACE TRIGGER guests_changed
    AFTER UPDATE ON guests
    FOR EACH ROW EXECUTE FUNCTION site_state_changed();
CREATE OR REPLACE TRIGGER episode_guests_changed
    AFTER INSERT OR UPDATE OR DELETE ON episode_guests
    FOR EACH ROW EXECUTE FUNCTION site_state_changed();
-- Chapters show on the episode page, and whether an episode has any in the feed.
CREATE OR REPLACE TRIGGER episode_chapters_changed
    AFTER INSERT OR UPDATE OR DELETE ON episode_chapters
    FOR EACH ROW EXECUTE FUNCTION site_state_changed();
