/*
 * common/dberr.h - which MariaDB errors are a row's own value refused by the table.
 *
 * The request log rejects such a row and goes on; the features' admin API answers 500 (the
 * table cannot hold it: sending again will not help). Every other error is the server's state
 * (a lost connection, read-only, a lock wait, a trigger) and worth a retry.
 */
#ifndef MG_COMMON_DBERR_H
#define MG_COMMON_DBERR_H

#include <stdbool.h>

#include <mysqld_error.h>

static inline bool mg_db_value_refused(unsigned e)
{
    switch (e) {
    case ER_BAD_NULL_ERROR:                  /* 1048 */
    case ER_WARN_DATA_OUT_OF_RANGE:          /* 1264 */
    case WARN_DATA_TRUNCATED:                /* 1265 */
    case ER_TRUNCATED_WRONG_VALUE:           /* 1292: a bad DATETIME */
    case ER_TRUNCATED_WRONG_VALUE_FOR_FIELD: /* 1366: bytes not in the column's character set */
    case ER_DATA_TOO_LONG:                   /* 1406 */
    case ER_WRONG_VALUE_FOR_TYPE:            /* 1411 */
    case ER_DATA_OUT_OF_RANGE:               /* 1690 */
    case ER_CONSTRAINT_FAILED:               /* 4025: an operator's CHECK constraint */
        return true;
    default:
        return false;
    }
}

#endif /* MG_COMMON_DBERR_H */
