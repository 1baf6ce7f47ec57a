-- features/schema.sql - the source of truth of user features (MariaDB).
-- The gateway runs the same statement (IF NOT EXISTS) when a MariaDB thread connects; a
-- deployment that does not let the gateway create tables applies this file itself.
-- One row per (app, user): |features| is the normalized JSON object {"GROUP": value, ...}
-- (features/fvalue.h), exactly the text sent upstream as x-user-features. utf8mb4_bin: user ids
-- are told apart by case, as in Redis's keys ("Ann" and "ann" are two users).
CREATE TABLE IF NOT EXISTS user_features (
    app VARCHAR(64) NOT NULL,
    user_id VARCHAR(128) NOT NULL,
    features LONGTEXT NOT NULL CHECK (JSON_VALID(features)),
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (app, user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
