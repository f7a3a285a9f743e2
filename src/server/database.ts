/**
 * The server's SQLite database: API keys, jobs and their events. One file (`tsight.db` in the data directory), WAL
 * mode; the schema is created on first open and versioned with `user_version`.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";

export type Db = Database.Database;

const SCHEMA_VERSION = 1;

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

/** Opens (creating if needed) the database at `file`; ":memory:" gives a private in-memory one. */
export function openDatabase(file: string): Db {
  if (file !== ":memory:") fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = NORMAL");
  db.pragma("busy_timeout = 5000");
  const version = db.pragma("user_version", { simple: true }) as number;
  if (version === 0) {
    db.exec("BEGIN");
    db.exec(SCHEMA);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
    db.exec("COMMIT");
  } else if (version !== SCHEMA_VERSION) {
    db.close();
    throw new Error(`${file}: database schema version ${version}, but this tsight uses ${SCHEMA_VERSION}; use another --data-dir`);
  }
  return db;
}
