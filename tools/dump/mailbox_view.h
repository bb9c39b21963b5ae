/*
 * tether-dump's view of the mailbox (shm/mailbox.h): the object beside the
 * registry segment, mapped read-only like it. Text lines after the
 * registry's table, or a "mailbox" member of the JSON object (null when
 * the group runs without one).
 */
#ifndef TETHER_TOOLS_DUMP_MAILBOX_VIEW_H
#define TETHER_TOOLS_DUMP_MAILBOX_VIEW_H

#include <jansson.h>
#include <stddef.h>

/* user NULL: the whole mailbox; else also that user's stored seqs and ages. */
void th_dump_mailbox_text(const char *shm_name, const char *user, size_t ulen);
json_t *th_dump_mailbox_json(const char *shm_name, const char *user, size_t ulen);

#endif
