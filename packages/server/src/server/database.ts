/**
 * The server's SQLite database: API keys, jobs and their events. One file (`tsight.db` in the data directory), WAL
 * mode; the schema is created on first open and versioned with `user_version`: SCHEMA is version 1, and each entry
 * of MIGRATIONS takes a file one version further (a new file runs them all, so both paths are the same SQL).
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";

export type Db = Database.Database;

const SCHEMA = `
CREATE TABLE api_keys (
  id        TEXT PRIMARY KEY,
  name      TEXT NOT NULL,
  salt      BLOB NOT NULL,
  hash      BLOB NOT NULL,          -- sha-256(salt || secret); the key itself is never stored
  created   INTEGER NOT NULL,
  revoked   INTEGER,
  last_used INTEGER
);
CREATE TABLE jobs (
  id        TEXT PRIMARY KEY,
  key_id    TEXT NOT NULL,          -- the API key that submitted it (api_keys.id)
  model     TEXT NOT NULL,          -- model key
  kind      TEXT NOT NULL,
  status    TEXT NOT NULL,
  created   INTEGER NOT NULL,
  updated   INTEGER NOT NULL,
  started   INTEGER,                -- RUNNING since
  finished  INTEGER,
  error     TEXT,                   -- ErrorInfo JSON
  result    TEXT NOT NULL DEFAULT 'none',   -- none | available | expired
  result_bytes INTEGER,
  expires   INTEGER,
  last_seq  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_key_status ON jobs (key_id, status);
CREATE INDEX jobs_by_result_expiry ON jobs (result, expires);
CREATE TABLE events (
  job_id  TEXT NOT NULL,
  seq     INTEGER NOT NULL,
  event   TEXT NOT NULL,            -- JobEvent JSON
  created INTEGER NOT NULL,
  PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
`;

const MIGRATIONS: readonly string[] = [
  // 2: webhooks (the secret is kept only until the delivery is over), and listing a key's jobs newest first.
  `
  ALTER TABLE jobs ADD COLUMN webhook TEXT;            -- URL to POST to when the job ends
  ALTER TABLE jobs ADD COLUMN webhook_secret TEXT;     -- signing secret; NULL once delivered or given up
  ALTER TABLE jobs ADD COLUMN webhook_state TEXT;      -- pending | delivered | failed
  CREATE INDEX jobs_by_key_created ON jobs (key_id, created);
  `,
  // 3: idempotency keys of submissions, and finding ended jobs to delete.
  `
  ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;    -- the client's key for the submission (per API key)
  CREATE UNIQUE INDEX jobs_by_idempotency ON jobs (key_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
  CREATE INDEX jobs_by_finished ON jobs (status, finished);
  `,
  // 4: the digest of a keyed submission's body (idempotency.ts); NULL for jobs stored before, taken as matching.
  `
  ALTER TABLE jobs ADD COLUMN request_digest TEXT;     -- sha-256 (hex) of the body sent with the idempotency key
  `,
  // 5: the bytes of a job's stored events (its key's kept bytes count them: see JobStore.storedBytes).
  `
  ALTER TABLE jobs ADD COLUMN event_bytes INTEGER NOT NULL DEFAULT 0;
  `,
  // 6: a key's kept results, found at every submission without reading its other jobs (JobStore.storedBytes).
  `
  CREATE INDEX jobs_by_key_result ON jobs (key_id, result, expires);
  `,
];

const SCHEMA_VERSION = 1 + MIGRATIONS.length;

/** Opens (creating if needed) the database at `file`; ":memory:" gives a private in-memory one. */
export function openDatabase(file: string): Db {
  if (file !== ":memory:") fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = NORMAL");
  db.pragma("busy_timeout = 5000");
  const version = db.pragma("user_version", { simple: true }) as number;
  if (version > SCHEMA_VERSION) {
    db.close();
    throw new Error(`${file}: database schema version ${version} is newer than this tsight's (${SCHEMA_VERSION}); update tsight or use another --data-dir`);
  }
  if (version < SCHEMA_VERSION) {
    db.transaction(() => {
      if (version === 0) db.exec(SCHEMA);
      for (let v = Math.max(version, 1); v < SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v - 1]!);
      db.pragma(`user_version = ${SCHEMA_VERSION}`);
    })();
  }
  return db;
}
