//! The PostgreSQL store's schema: the one ordered list of migration steps.

/// The schema, one version per step, in order: append, never edit a released step.
pub const MIGRATIONS: &[&str] = &[
    // 1: the tables of the SQLite store, messages partitioned by day. The tables every group
    // updates (terminals, latest, watermarks) leave room in their pages (fillfactor), so that
    // an update stays in its page and leaves the indexes alone.
    r#"
CREATE TABLE terminals (
    terminal     text COLLATE "C" PRIMARY KEY,
    site         text COLLATE "C" NOT NULL,
    level        text NOT NULL,
    online       boolean NOT NULL DEFAULT false,
    version      text,
    started_ms   bigint,
    keep_alive_s bigint,
    last_seen_ms bigint
) WITH (fillfactor = 50);
CREATE INDEX terminals_by_site ON terminals (site);
CREATE TABLE message_keys (
    terminal text COLLATE "C" NOT NULL,
    stream   smallint NOT NULL,
    seq      bigint NOT NULL,
    time_ms  bigint NOT NULL,
    PRIMARY KEY (terminal, stream, seq)
);
CREATE INDEX message_keys_by_time ON message_keys USING brin (time_ms);
CREATE TABLE messages (
    terminal    text COLLATE "C" NOT NULL,
    stream      smallint NOT NULL,
    seq         bigint NOT NULL,
    time_ms     bigint NOT NULL,
    received_ms bigint NOT NULL,
    payload     bytea NOT NULL,
    PRIMARY KEY (terminal, stream, time_ms, seq)
) PARTITION BY RANGE (time_ms);
CREATE TABLE messages_default PARTITION OF messages DEFAULT;
-- The newest value of each metric of a terminal, in one row per terminal (a province's fleet
-- view reads one row a terminal): the metrics in name order, each value's time and value.
CREATE TABLE latest (
    terminal text COLLATE "C" PRIMARY KEY,
    metrics  text[] COLLATE "C" NOT NULL,
    ts_ms    bigint[] NOT NULL,
    vals     double precision[] NOT NULL
) WITH (fillfactor = 50);
CREATE TABLE watermarks (
    terminal  text COLLATE "C" NOT NULL,
    stream    smallint NOT NULL,
    watermark bigint NOT NULL,
    PRIMARY KEY (terminal, stream)
) WITH (fillfactor = 50);
CREATE TABLE dropped (
    terminal text COLLATE "C" NOT NULL,
    stream   smallint NOT NULL,
    first    bigint NOT NULL,
    last     bigint NOT NULL,
    PRIMARY KEY (terminal, stream, first)
);
CREATE TABLE numbering (
    terminal text COLLATE "C" NOT NULL,
    stream   smallint NOT NULL,
    first    bigint NOT NULL,
    PRIMARY KEY (terminal, stream)
);
CREATE TABLE division_names (
    code bigint PRIMARY KEY,
    name text NOT NULL
);
CREATE TABLE terminal_names (
    terminal text COLLATE "C" PRIMARY KEY,
    name     text NOT NULL
);
CREATE TABLE counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
CREATE TABLE rejected (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic       text NOT NULL,
    received_ms bigint NOT NULL,
    reason      text NOT NULL,
    payload     bytea NOT NULL
);
-- The watermarks of a group's (terminal, stream) pairs, given sorted: each advanced (if asked)
-- over stored seqs, reported drops and the seqs below where the terminal's numbering starts,
-- exactly as the SQLite store does it. The caller holds the terminals' rows in `terminals`
-- locked: no other group of these terminals is between its inserts and its commit, and what
-- committed before is what these statements read. Most pairs only move over a short run
-- of new seqs: that is one statement for all of them; the others (a run longer than 64, drops
-- or a numbering start ahead) take the general loop.
CREATE FUNCTION advance_watermarks(p_terminals text[], p_streams smallint[], p_advance boolean[])
RETURNS TABLE (o_terminal text, o_stream smallint, o_watermark bigint)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    wm bigint;
    before bigint;
    covered bigint;
    next_seq bigint;
BEGIN
    INSERT INTO watermarks (terminal, stream, watermark)
        SELECT u.t, u.s, 0 FROM unnest(p_terminals, p_streams, p_advance) AS u(t, s, a)
        WHERE u.a ORDER BY u.t COLLATE "C", u.s
        ON CONFLICT DO NOTHING;
    FOR r IN
        WITH cur AS (
            SELECT u.t, u.s, u.a, coalesce(w.watermark, 0) AS wm
            FROM unnest(p_terminals, p_streams, p_advance) AS u(t, s, a)
            LEFT JOIN watermarks w ON w.terminal = u.t AND w.stream = u.s
        ), fast AS (
            SELECT c.t, c.s, c.a, c.wm, coalesce(run.last, c.wm) AS new_wm,
                c.a AND (coalesce(run.last - c.wm = 64, false)
                    OR EXISTS (SELECT 1 FROM dropped d
                        WHERE d.terminal = c.t AND d.stream = c.s AND d.last > c.wm)
                    OR EXISTS (SELECT 1 FROM numbering n
                        WHERE n.terminal = c.t AND n.stream = c.s AND n.first - 1 > c.wm)
                ) AS slow
            FROM cur c CROSS JOIN LATERAL (
                SELECT max(x.seq) FILTER (WHERE x.seq - x.rn = c.wm) AS last FROM (
                    SELECT k.seq, row_number() OVER (ORDER BY k.seq) AS rn FROM (
                        SELECT k.seq FROM message_keys k
                        WHERE c.a AND k.terminal = c.t AND k.stream = c.s AND k.seq > c.wm
                        ORDER BY k.seq LIMIT 64
                    ) k
                ) x
            ) run
        ), moved AS (
            UPDATE watermarks w SET watermark = f.new_wm FROM fast f
            WHERE f.a AND NOT f.slow AND f.new_wm <> f.wm AND w.terminal = f.t AND w.stream = f.s
        )
        SELECT * FROM fast
    LOOP
        wm := r.new_wm;
        IF r.slow THEN
            wm := r.wm;
            LOOP
                before := wm;
                EXIT WHEN wm = 9223372036854775807;
                SELECT max(x.last) INTO covered FROM (
                    SELECT d.last FROM dropped d WHERE d.terminal = r.t AND d.stream = r.s
                        AND d.first <= wm + 1 AND d.last >= wm + 1
                    UNION ALL
                    SELECT n.first - 1 FROM numbering n WHERE n.terminal = r.t AND n.stream = r.s
                        AND n.first - 1 >= wm + 1
                ) x;
                IF covered IS NOT NULL THEN
                    wm := greatest(wm, covered);
                END IF;
                FOR next_seq IN SELECT k.seq FROM message_keys k
                    WHERE k.terminal = r.t AND k.stream = r.s AND k.seq > wm ORDER BY k.seq LIMIT 1024
                LOOP
                    EXIT WHEN next_seq <> wm + 1;
                    wm := next_seq;
                END LOOP;
                EXIT WHEN wm = before;
            END LOOP;
            IF wm <> r.wm THEN
                UPDATE watermarks w SET watermark = wm WHERE w.terminal = r.t AND w.stream = r.s;
            END IF;
        END IF;
        o_terminal := r.t;
        o_stream := r.s;
        o_watermark := wm;
        RETURN NEXT;
    END LOOP;
END
$$;
"#,
    // 2: the meeting host's sessions, the alarms and the readiness answers.
    r#"
CREATE TABLE meetings (
    id         text COLLATE "C" PRIMARY KEY,
    status     text NOT NULL,
    created_ms bigint NOT NULL,
    host       bytea NOT NULL
);
CREATE INDEX meetings_by_status ON meetings (status);
CREATE TABLE alarms (
    id        bigint PRIMARY KEY,
    subject   text COLLATE "C" NOT NULL,
    kind      text NOT NULL,
    state     text NOT NULL,
    raised_ms bigint NOT NULL,
    alarm     text NOT NULL
);
CREATE INDEX alarms_by_state ON alarms (state, raised_ms);
CREATE INDEX alarms_by_subject ON alarms (subject, id);
CREATE TABLE readiness (
    terminal text COLLATE "C" NOT NULL,
    at_ms    bigint NOT NULL,
    ready    boolean,
    result   text NOT NULL,
    PRIMARY KEY (terminal, at_ms)
);
"#,
    // 3: singleton roles held through leases (on the database's clock), and the central
    // instances at work.
    r#"
CREATE TABLE leases (
    role       text PRIMARY KEY,
    holder     text NOT NULL,
    epoch      bigint NOT NULL,
    expires_ms bigint NOT NULL
);
CREATE TABLE instances (
    instance     text COLLATE "C" PRIMARY KEY,
    started_ms   bigint NOT NULL,
    last_seen_ms bigint NOT NULL
);
"#,
    // 4: de-duplication by runs of seqs instead of a key a message, and all a group reads and
    // rewrites of a terminal in its one row of `terminals`: the watermark and the runs of seqs
    // stored (first, last of each run, in order, apart) of each stream, the newest values
    // (from `latest`), and a revision that each such write moves on (a group writes a row only
    // under the revision it read). `message_keys` (made into runs), `watermarks`, `latest` and
    // the SQL watermark function go. `messages` keeps no key: its day partitions are written
    // in arrival order, each group's rows in terminal order, and read through a BRIN index of
    // (terminal, time) over ranges of 4 pages: a terminal's rows are found in the few pages of
    // each group that hold them (`PgStore` summarises the new ranges as it goes).
    r#"
ALTER TABLE terminals
    ADD COLUMN revision bigint NOT NULL DEFAULT 0,
    ADD COLUMN telemetry_wm bigint NOT NULL DEFAULT 0,
    ADD COLUMN telemetry_runs bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN events_wm bigint NOT NULL DEFAULT 0,
    ADD COLUMN events_runs bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN metrics text[] COLLATE "C",
    ADD COLUMN ts_ms bigint[],
    ADD COLUMN vals double precision[];
CREATE TEMP TABLE runs_v4 ON COMMIT DROP AS
WITH numbered AS (
    SELECT terminal, stream, seq,
        seq::numeric - row_number() OVER (PARTITION BY terminal, stream ORDER BY seq) AS island
    FROM message_keys
), islands AS (
    SELECT terminal, stream, min(seq) AS first, max(seq) AS last
    FROM numbered GROUP BY terminal, stream, island
)
SELECT i.terminal, i.stream, array_agg(b.v ORDER BY i.first, b.o) AS runs
FROM islands i CROSS JOIN LATERAL unnest(ARRAY[i.first, i.last]) WITH ORDINALITY AS b(v, o)
GROUP BY i.terminal, i.stream;
-- Every terminal with messages has its row (each group wrote it).
UPDATE terminals t SET telemetry_runs = r.runs FROM runs_v4 r
    WHERE r.terminal = t.terminal AND r.stream = 0;
UPDATE terminals t SET events_runs = r.runs FROM runs_v4 r
    WHERE r.terminal = t.terminal AND r.stream = 1;
UPDATE terminals t SET telemetry_wm = w.watermark FROM watermarks w
    WHERE w.terminal = t.terminal AND w.stream = 0;
UPDATE terminals t SET events_wm = w.watermark FROM watermarks w
    WHERE w.terminal = t.terminal AND w.stream = 1;
UPDATE terminals t SET metrics = l.metrics, ts_ms = l.ts_ms, vals = l.vals FROM latest l
    WHERE l.terminal = t.terminal;
UPDATE terminals SET revision = 1;
DROP FUNCTION advance_watermarks(text[], smallint[], boolean[]);
DROP TABLE watermarks;
DROP TABLE message_keys;
DROP TABLE latest;
ALTER TABLE messages DROP CONSTRAINT messages_pkey;
CREATE INDEX messages_brin ON messages USING brin (terminal, time_ms) WITH (pages_per_range = 4);
"#,
    // 5: when central received a terminal's last offline presence: a message received after it
    // says the terminal is online again, even if its online presence was lost on the way.
    r#"
ALTER TABLE terminals ADD COLUMN offline_ms bigint;
"#,
    // 6: releases (the signed manifest and the artifact) and staged rollouts with each box's
    // progress.
    r#"
CREATE TABLE releases (
    version  text PRIMARY KEY,
    sha256   text NOT NULL,
    size     bigint NOT NULL,
    signed   bytea NOT NULL,
    artifact bytea NOT NULL,
    added_ms bigint NOT NULL
);
-- Artifacts are read in pieces: kept uncompressed, a piece is read without the whole.
ALTER TABLE releases ALTER COLUMN artifact SET STORAGE EXTERNAL;
CREATE INDEX releases_by_sha256 ON releases (sha256);
CREATE TABLE rollouts (
    id         bigint PRIMARY KEY,
    version    text NOT NULL,
    state      text NOT NULL,
    plan       text NOT NULL,
    reason     text NOT NULL,
    command    bytea NOT NULL,
    updated_ms bigint NOT NULL
);
CREATE TABLE rollout_sites (
    rollout     bigint NOT NULL,
    terminal    text NOT NULL,
    stage       text NOT NULL,
    bytes       bigint NOT NULL,
    reason      text NOT NULL,
    notified_ms bigint,
    updated_ms  bigint NOT NULL,
    PRIMARY KEY (rollout, terminal)
);
"#,
    // 7: a group no longer rewrites its terminals' rows. It appends what it stored to
    // `ingest_journal` (the runs of seqs, drops and numbering starts: a row a group) under a
    // lock that the groups of every instance take in turn, and an instance folds the journal
    // into the rows of `terminals` now and then (deleting what it folded, noted in
    // `ingest_folds`).
    r#"
CREATE SEQUENCE ingest_journal_id;
CREATE TABLE ingest_journal (
    id        bigint PRIMARY KEY,
    instance  bigint NOT NULL,
    terminals text[] NOT NULL,
    streams   smallint[] NOT NULL,
    kinds     smallint[] NOT NULL,
    firsts    bigint[] NOT NULL,
    lasts     bigint[] NOT NULL,
    -- When it was appended (ms since the epoch): a row an instance left long ago is folded
    -- by another.
    written_ms bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
);
-- A group's arrays compress well and fast with LZ4 (fewer TOAST chunks and less WAL than
-- uncompressed, much less CPU than the default pglz), where the server has it.
DO $$ BEGIN
    ALTER TABLE ingest_journal ALTER COLUMN terminals SET COMPRESSION lz4,
        ALTER COLUMN firsts SET COMPRESSION lz4, ALTER COLUMN lasts SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN NULL;
END $$;
CREATE TABLE ingest_folds (
    one             boolean PRIMARY KEY DEFAULT true CHECK (one),
    deleted_through bigint NOT NULL
);
INSERT INTO ingest_folds VALUES (true, 0);
"#,
];
