/*
 * tests/unit/sample_rec.h - one request-log record with the common fields set, shared by the
 * tests of the line's writer (test_reqlog.c) and of its reader for MariaDB (test_dbrow.c).
 */
#ifndef MG_TESTS_SAMPLE_REC_H
#define MG_TESTS_SAMPLE_REC_H

#include "gateway/reqlog.h"

static inline mg_reqlog_rec_t mg_test_sample_rec(void)
{
    return (mg_reqlog_rec_t){
        .time_us = 1700000000123456LL, /* 2023-11-14T22:13:20.123456Z */
        .id = "00112233445566770000000000000001",
        .request_id = "r-1",
        .client = "127.0.0.1:5555",
        .proto = "h2",
        .method = "POST",
        .host = "digits-production.example",
        .path = "/v1/predict",
        .app = "digits",
        .env = "production",
        .service = "digits-production-v3",
        .pod = "10.0.0.7:8500",
        .status = 200,
        .req_bytes = 84,
        .resp_bytes = 95,
        .upstream_us = 1234,
        .total_us = 2345,
        .error = NULL,
    };
}

#endif
