/*
 * The notify body's fast path: the common request shape, read without
 * building a jansson tree. Pure, like notifier/api.h, and fuzzed against it.
 *
 * The fast path only ever says yes: it takes a body when every part of it is
 * of the plain kind machine-made JSON has (strings without escapes, integers
 * of up to 18 digits, objects with few distinct keys, shallow nesting) and
 * every field passes th_api_check_notify's rules; then the frame rendered
 * from its result is byte for byte the one the jansson path renders (data
 * re-emitted compact, keys in their order). For anything else (an escape, a
 * real number, a duplicate key, an error of any kind) it returns 0 and the
 * caller runs th_api_parse_notify, whose answer stands, error messages
 * included.
 */
#ifndef TETHER_NOTIFIER_NOTIFY_FAST_H
#define TETHER_NOTIFIER_NOTIFY_FAST_H

#include "notifier/api.h"

#include <stddef.h>

/*
 * One notify object. Returns 1 with *out filled (strings borrow from body;
 * out->data_json, the data object re-emitted compact, borrows from scratch,
 * which is emptied first and grows as needed), 0 when the general parser
 * must decide, -ENOMEM when scratch could not grow.
 */
int th_api_fast_notify(const char *body, size_t len, struct th_buf *scratch, struct th_notify *out);

/*
 * A batch body, a JSON array of notify objects: 1 with items[0..*n) filled
 * as th_api_fast_notify fills one (every data_json in scratch), 0 when the
 * general parser must decide (any element it does not take, or more than
 * max elements), -ENOMEM.
 */
int th_api_fast_batch(const char *body, size_t len, struct th_buf *scratch, struct th_notify *items,
                      size_t max, size_t *n);

#endif
