-- conf/request_log.sql - the request log table, as modelgate creates it at start when it is
-- missing (gateway/dblog.c; request_log_db in conf/README.md). For operators who create it
-- themselves: keep the partition names p_old and p_future and the pYYYYMMDD day partitions,
-- since the gateway adds days (7 ahead) by splitting p_future and drops expired ones by name.
-- Replace 739000 (TO_DAYS of the creation day) with SELECT TO_DAYS(UTC_DATE()).
CREATE DATABASE IF NOT EXISTS modelgate;
USE modelgate;

CREATE TABLE IF NOT EXISTS request_log (
  id BINARY(16) NOT NULL COMMENT 'idempotency key: HEX(id) is the log line''s id',
  time DATETIME(6) NOT NULL COMMENT 'request start, UTC',
  request_id VARCHAR(64) NULL,
  client VARCHAR(64) NULL,
  proto VARCHAR(16) NULL,
  method VARCHAR(16) NULL,
  host VARCHAR(255) NULL,
  path VARCHAR(2048) NULL,
  app VARCHAR(64) NULL,
  env VARCHAR(64) NULL,
  service VARCHAR(128) NULL,           -- the service that answered: split or experiment variant
  pod VARCHAR(255) NULL,
  status SMALLINT NOT NULL,            -- 0: no response was sent
  req_bytes BIGINT UNSIGNED NOT NULL,
  resp_bytes BIGINT UNSIGNED NOT NULL,
  upstream_us BIGINT NULL,             -- NULL: no upstream answered
  total_us BIGINT NOT NULL,
  error VARCHAR(255) NULL,
  fallback BOOLEAN NOT NULL,           -- sent to another service of the split: its own was down
  retries INT UNSIGNED NOT NULL,
  features VARCHAR(16) NULL,           -- hit, miss, timeout, unavailable, none, too_large; NULL = the route has no features
  features_hash VARCHAR(64) NULL,
  -- time first: rows arrive in time order, so inserts append to the clustered index
  PRIMARY KEY (time, id),
  KEY app_env_time (app, env, time),   -- per-app reports over a time range
  KEY service_time (service, time)     -- per-variant (service) reports
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
  PARTITION BY RANGE (TO_DAYS(time)) (
    PARTITION p_old VALUES LESS THAN (739000),
    PARTITION p_future VALUES LESS THAN MAXVALUE
  );

-- Day partitions, as the gateway adds them (one per UTC day, [day, day + 1)):
--   ALTER TABLE request_log REORGANIZE PARTITION p_future INTO (
--     PARTITION p20240101 VALUES LESS THAN (TO_DAYS('2024-01-02')),
--     PARTITION p_future VALUES LESS THAN MAXVALUE);
-- Retention (retention_days), instant whatever the size:
--   ALTER TABLE request_log DROP PARTITION p20231001;
-- Example report: requests and errors per variant in the last hour
--   SELECT service, COUNT(*), SUM(status >= 500) FROM request_log
--   WHERE app = 'digits' AND env = 'production' AND time >= UTC_TIMESTAMP() - INTERVAL 1 HOUR
--   GROUP BY service;
