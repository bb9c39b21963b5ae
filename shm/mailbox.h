/*
 * The mailbox: every accepted notification, stored per user for
 * --mailbox-ttl seconds in its own POSIX shared-memory object
 * ("<--shm-name>.mailbox", e.g. /tether.mailbox), so a client that was away
 * gets what it missed when it resumes (?since=<seq>&epoch=<epoch>). It is a
 * separate object from the registry because it must outlive the group: a
 * graceful stop (SIGTERM) unlinks the registry and keeps this one, and the
 * next `tether run` with the same --shm-name re-attaches with the same epoch
 * when the layout matches (th_mbx_open). A layout change, a header that
 * does not check, another boot (boot_id differs) or a leftover writer still
 * alive start a new object with a new random epoch: the epoch changes
 * exactly when stored notifications may have been lost.
 *
 * Layout (every part starts on a 64-byte boundary; sizes from
 * th_mbx_layout(), overflow-checked):
 *
 *   struct th_mbx_hdr   magic, version, sizes, epoch, boot id, writer,
 *                       log head/tail, gauges, counters
 *   floors[]            nfloors (2 x nusers) uint64: seq floors of
 *                       recycled user records, by user hash
 *   users[]             nusers records (power of two), each a struct
 *                       th_mbx_user followed by a ring of per_user uint64
 *                       entry references; a user lives in one of the
 *                       TH_MBX_PROBE records: two windows of 8 from two
 *                       hashes of the user id
 *   arena[]             the log: a byte ring of entries (struct
 *                       th_mbx_entry, the id, the frame, 64-byte aligned),
 *                       appended at head, reclaimed at tail, oldest first
 *
 * Positions: a log position is a byte count since the object was made
 * (monotonic, multiple of 64, never 0); its arena offset is pos % arena
 * bytes. A position identifies one entry for the object's life, so "is
 * this still that entry" is one compare. A ring reference packs pos / 64
 * (40 bits) with a 24-bit tag of the entry's id hash (0: no id), so the
 * idempotency lookup scans the user's ring without touching the arena.
 *
 * CONCURRENCY PROTOCOL (who writes, who reads, what a dead writer leaves)
 *
 * One writer: the notifier (th_mbx_writer_begin CASes hdr->writer_pid from
 * 0 or a dead pid to its own; a second live writer gets -EBUSY). Readers:
 * every worker (resume), the notifier itself (presence, idempotency),
 * tether-dump (read-only mapping). No lock: a reader never waits for the
 * writer and never writes anything but the counters it owns.
 *
 * hdr identity (magic .. boot_id, sizes, offsets): written once by the
 *   creator (the supervisor, th_mbx_open) before ready := 1; read by every
 *   attacher first (th_mbx_attach checks them against the file). A creator
 *   killed before ready leaves ready 0: every attach refuses it and the next
 *   th_mbx_open replaces it (new epoch).
 * hdr->writer_pid / writer_start / writer_gen: taken by th_mbx_writer_begin
 *   (CAS from 0 or a dead pid; the start time guards against pid reuse),
 *   writer_gen bumped so entries this writer left "in flight" are told from
 *   a predecessor's; writer_pid cleared by th_mbx_writer_end. A killed
 *   writer leaves its pid: readers see it dead, the next writer takes over.
 *
 * entry (in the arena): written only by the writer, only in [head, head +
 *   size) after every entry there was reclaimed (tail moved past it).
 *   Fields are release-stored, the commit word entry.pos (= its own
 *   position) last. Readers: the worker on resume, dump, the notifier.
 *   A reader copies an entry (acquire loads, frame bytes as 64-bit atomic
 *   words) and keeps the copy only if, afterwards, hdr->tail <= pos (still
 *   not reclaimed: the writer moves tail with a release store before it
 *   overwrites anything, so a reader that saw an overwritten word also sees
 *   the new tail) and entry.pos == pos.
 *   Dead writer: an entry half-written at head was never published
 *   (hdr->head not moved past it): the next writer overwrites it.
 *   entry.outcome: written by the writer after the delivery finished
 *   ((writer_gen << 32) | HTTP status). A dead writer leaves 0 or an older
 *   writer_gen: "handed off or not, unknown", so a retry of the same id
 *   delivers the stored frame again (same seq: the client drops it if it
 *   had it) rather than lose it.
 *
 * hdr->head (release) / hdr->tail (release): writer only. head moves past an
 *   entry after its commit word and before any user ring names it; tail
 *   moves past an entry after its user record dropped it and before the
 *   space is reused. A writer killed between "head moved" and "record
 *   updated" leaves an orphan entry nobody references: it costs its bytes
 *   until tail reclaims it (reclaim checks the user's ring front and skips
 *   orphans). Nothing to repair.
 *
 * user record (struct th_mbx_user + ring): written only by the writer, each
 *   change inside a seqlock: hdr->busy_rec := record (so a successor knows
 *   which one), ver odd, fields (release stores), ver even, busy_rec :=
 *   none. Readers copy the record and its ring between two acquire loads of
 *   ver and keep the copy only if both are equal and even. Inside a change
 *   the writer stores seq before ring[head] and ring[head] before head, and
 *   dropped before tail: every prefix of a change leaves a record whose
 *   fields are each valid. Dead writer: ver left odd on record busy_rec;
 *   readers spin a little, and once hdr->writer_pid is dead take the record
 *   as it is (nothing changes it any more and every field is valid);
 *   th_mbx_writer_begin (the notifier's next incarnation) clamps that
 *   record's counters (head - tail <= per_user), makes ver even and
 *   recounts the gauges.
 *   user.seq: the user's last assigned seq. th_mbx_commit() stores it (and
 *   the entry) before it returns, and the notifier hands a frame to a
 *   worker only after that, so a seq a client could have seen is never
 *   assigned again: a kill -9 of the notifier at any point costs at most an
 *   unused seq (a gap), never a repeat.
 *   user.gen: bumped when the record is recycled for another user. A new
 *   user takes a never-used record of the emptier of its two windows, else
 *   the record of its TH_MBX_PROBE whose entries expire first (nothing lost
 *   if they all expired; otherwise they are dropped, reason "full": about
 *   none below 70% of the records in use). Before recycling, the writer raises
 *   floors[hash % nfloors] to the old user's seq; a new record starts
 *   at seq = floor (first notification floor + 1) and dropped = floor, so a
 *   user's seq only grows within an epoch even if its record went away.
 *   (A floor is shared by the users of one hash bucket, so after records
 *   were recycled a user may resume with recovered:false that lost
 *   nothing: the safe side.)
 *
 * floors[]: writer only (release), read by the writer and by resume for a
 *   user without a record. Monotonic; a dead writer leaves a value at least
 *   as high as needed (it is raised before the record changes).
 *
 * hdr gauges (bytes, entries) and counters: gauges written by the writer
 *   (relaxed stores; may be off by one entry after a kill -9 until
 *   th_mbx_writer_begin recounts them from the log); stored/evicted_*
 *   counters by the writer, replayed/resumes_* by workers (atomic adds).
 *   Counters survive a graceful restart with the mailbox.
 *
 * NO GAP, NO DUPLICATE BETWEEN REPLAY AND LIVE (the ordering argument)
 *   notifier: th_mbx_commit()           (record update, then a seq_cst fence)
 *             th_reg_find_user()        (loads slot ctl words)
 *             hand off to those slots, each message carrying the seq
 *   worker:   th_reg_claim()            (slot LIVE)
 *             th_mbx_replay_begin()     (a seq_cst fence, then the record)
 *             replay entries seq > since; then deliver live frames, dropping
 *             any with seq <= the last seq it replayed
 *   Each side writes, fences, then reads what the other wrote (Dekker): at
 *   least one of them sees the other. Either the worker's snapshot contains
 *   the notification (it is replayed), or the notifier's lookup finds the
 *   new LIVE slot (it is handed off live), or both (the worker drops the
 *   live copy by seq). A notification committed after the snapshot has a
 *   seq above everything replayed, and its lookup sees the slot (the slot
 *   was LIVE before the snapshot), so it arrives live, after the replay.
 *   Every handoff message therefore carries the notification's seq
 *   (struct th_ho_msg nseq).
 *
 * All functions return 0 or a count on success and -errno on failure, with
 * a message in err where a human needs one.
 */
#ifndef TETHER_SHM_MAILBOX_H
#define TETHER_SHM_MAILBOX_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shm/registry.h" /* TH_USER_MAX */

#define TH_MBX_MAGIC 0x31584d4248544554ULL /* "TETHMBX1" little-endian */
#define TH_MBX_VERSION 2
#define TH_MBX_SUFFIX ".mailbox"
#define TH_MBX_EPOCH_LEN 16           /* hex digits of the 64-bit epoch */
#define TH_MBX_PROBE 16               /* records a user may live in: two windows of 8 */
#define TH_MBX_PER_USER_MAX 1024      /* --mailbox-per-user upper bound */
#define TH_MBX_BYTES_MIN (1u << 20)   /* --mailbox-bytes lower bound */
#define TH_MBX_MAX_FRAME (70u * 1024) /* a rendered frame with seq and epoch */
#define TH_MBX_MAX_ID 128
#define TH_MBX_EXPIRE_BATCH 16384
#define TH_MBX_NONE UINT32_MAX

/* Eviction reasons (metrics label reason="ttl|full|per_user"). */
enum th_mbx_reason { TH_MBX_EV_TTL = 0, TH_MBX_EV_FULL, TH_MBX_EV_PER_USER, TH_MBX_EV_COUNT };

/* What th_mbx_open sizes the object for (a different set = a new layout, a new epoch). */
struct th_mbx_params {
    uint64_t bytes;    /* --mailbox-bytes: the whole object, header and tables included */
    uint32_t per_user; /* --mailbox-per-user, 1..TH_MBX_PER_USER_MAX */
    uint32_t users;    /* user records wanted (rounded up to a power of two); 0: derived */
};

struct th_mbx_counters_sh {
    _Atomic uint64_t stored;                   /* writer */
    _Atomic uint64_t evicted[TH_MBX_EV_COUNT]; /* writer */
    _Atomic uint64_t replayed;                 /* workers */
    _Atomic uint64_t resumes_recovered;        /* workers: recovered:true */
    _Atomic uint64_t resumes_lost;             /* workers: recovered:false */
    _Atomic uint64_t duplicates;               /* writer: idempotent retries answered */
    _Atomic uint64_t answered_stored;          /* writer: notify answers 202 stored */
    /*
     * writer, when the object caches a mailbox kept elsewhere (JetStream,
     * notifier/mailbox_js.c): 1 + the source seq up to which everything
     * was applied; 0: not a cache. Read by workers: a resume whose since
     * is past it waits for the cache (worker/resume.c). In the counters
     * block because it has room there (the layout stays version 2).
     */
    _Atomic uint64_t source_seq;
    /*
     * writer (cache): the source's life that source_seq counts in (the
     * JetStream epoch), kept across writers: a restarted notifier whose
     * stream still has this epoch resumes its mirror at source_seq instead
     * of refilling the whole stream. source_handed: 1 + the source seq up
     * to which the writer also handed every applied message to this node's
     * live connections (the restart re-hands what is above it; workers drop
     * by seq what they had). Room in the block: the layout stays version 2.
     */
    _Atomic uint64_t source_epoch;
    _Atomic uint64_t source_handed;
} __attribute__((aligned(64)));

struct th_mbx_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t per_user;
    uint64_t total_size;
    uint64_t arena_bytes;
    uint32_t nusers;   /* power of two */
    uint32_t rec_size; /* bytes per user record with its ring, multiple of 64 */
    uint32_t nfloors;  /* power of two */
    uint32_t pad0;
    uint64_t off_floors, off_users, off_arena;
    uint64_t epoch;                /* random, new with every new object */
    uint64_t created_ns;           /* realtime */
    char boot_id[40];              /* /proc/sys/kernel/random/boot_id of the creating boot */
    _Atomic uint32_t ready;        /* 1 once initialised */
    _Atomic uint32_t busy_rec;     /* record inside a writer change, or TH_MBX_NONE */
    _Atomic int32_t writer_pid;    /* 0: no writer */
    _Atomic uint32_t writer_gen;   /* bumped by every th_mbx_writer_begin */
    _Atomic uint64_t writer_start; /* /proc start time of writer_pid, against pid reuse */
    _Atomic uint64_t head __attribute__((aligned(64))); /* log position: next append */
    _Atomic uint64_t tail;    /* log position: oldest entry not reclaimed */
    _Atomic uint64_t bytes;   /* bytes of entries retained by some user */
    _Atomic uint64_t entries; /* entries retained by some user */
    struct th_mbx_counters_sh counters;
} __attribute__((aligned(64)));

struct th_mbx_user {
    _Atomic uint64_t ver;         /* seqlock, see protocol */
    _Atomic uint64_t seq;         /* last seq assigned */
    _Atomic uint64_t dropped;     /* highest seq that left the mailbox (evicted, expired, floor) */
    _Atomic uint64_t last_exp_ns; /* latest expiry of its entries (recycling picks the lowest) */
    _Atomic uint64_t head; /* ring counters: refs [tail, head) retained, head - tail <= per_user */
    _Atomic uint64_t tail;
    _Atomic uint32_t gen; /* bumped when recycled for another user */
    _Atomic uint32_t user_hash;
    _Atomic uint32_t user_len; /* 0: empty record */
    uint32_t pad;
    char user[TH_USER_MAX]
        __attribute__((aligned(8))); /* 64-bit atomic words, not NUL-terminated */
    _Atomic uint64_t ring[];         /* per_user refs, index = counter % per_user */
} __attribute__((aligned(64)));

#define TH_MBX_E_PAD 1u /* filler to the arena's end: skip to the next lap */

struct th_mbx_entry {
    _Atomic uint64_t pos; /* commit word: == this entry's position once complete */
    _Atomic uint64_t seq;
    _Atomic uint64_t stored_ns;   /* realtime */
    _Atomic uint64_t expires_ns;  /* realtime */
    _Atomic uint64_t outcome;     /* (writer_gen << 32) | status (200, 202), 0 unknown */
    _Atomic uint32_t size;        /* bytes in the arena, header included, multiple of 64 */
    _Atomic uint32_t rec;         /* user record */
    _Atomic uint32_t len;         /* frame bytes */
    _Atomic uint32_t connections; /* for a 200 outcome */
    _Atomic uint16_t idlen;
    _Atomic uint16_t flags; /* TH_MBX_E_PAD */
    _Atomic uint32_t id_hash;
    /* then idlen id bytes (padded to 8), then len frame bytes, as 64-bit words */
} __attribute__((aligned(64)));

/* A process's handle on the mapped object (not shared). */
struct th_mbx {
    void *base;
    size_t size;
    int writable;
    uint32_t gen; /* the writer's writer_gen, 0 when not the writer */
    struct th_mbx_hdr *hdr;
    _Atomic uint64_t *floors;
    unsigned char *users;
    unsigned char *arena;
};

/* "<shm_name>.mailbox". Returns 0 or -ENAMETOOLONG. */
int th_mbx_name(const char *shm_name, char *buf, size_t cap);
/* Bytes the object needs (== p->bytes rounded down to 64), 0 when p is out of range. */
size_t th_mbx_layout(const struct th_mbx_params *p, struct th_mbx_hdr *out_hdr_template);

/*
 * Supervisor: re-attach to the mailbox of shm_name when its header checks,
 * its layout equals p's, it was made in this boot and no other writer is
 * alive (*reused = 1, same epoch); otherwise replace it with a new one
 * (*reused = 0, new epoch; err says why when one existed). Mode 0600.
 */
int th_mbx_open(struct th_mbx *m, const char *shm_name, const struct th_mbx_params *p, int *reused,
                char *err, size_t errlen);
/*
 * Everybody else: map the existing mailbox, checking magic, version and
 * sizes against the file first. writable = 0: O_RDONLY, PROT_READ (dump).
 * -ENOENT when there is none (the mailbox is off or never made).
 */
int th_mbx_attach(struct th_mbx *m, const char *shm_name, int writable, char *err, size_t errlen);
void th_mbx_detach(struct th_mbx *m);
int th_mbx_unlink(const char *shm_name);
/* The epoch as TH_MBX_EPOCH_LEN lower-case hex digits and a NUL. */
void th_mbx_epoch(const struct th_mbx *m, char out[TH_MBX_EPOCH_LEN + 1]);

/* ---- the writer (notifier) --------------------------------------------- */

/*
 * Become the writer: -EBUSY when another live process is. Repairs what a
 * dead writer left (busy record, gauges) and reclaims expired entries.
 */
int th_mbx_writer_begin(struct th_mbx *m, pid_t pid, uint64_t now_ns, char *err, size_t errlen);
/* Stop being the writer (graceful exit): writer_pid := 0. */
void th_mbx_writer_end(struct th_mbx *m);

/*
 * A hint, nothing else: start loading what storing a notification for the
 * user with this hash (th_user_hash) will touch, so that it is in the cache
 * when th_mbx_prepare/th_mbx_commit come a few notifications later. stage
 * 0: the record the user would be looked for in first (its first touch, a
 * cache miss, was most of a store's time); 1 (a few users after the stage 0
 * call, once the record is in): when that record is the user's and its ring
 * is full, the ring slot the store evicts from and reuses; 2 (after stage
 * 1): the oldest entry that slot names (the eviction reads its header). A
 * batch calls the stages for the items ahead of the one it stores.
 */
void th_mbx_prefetch(const struct th_mbx *m, uint32_t hash, int stage);

/* A seq reserved for one user by th_mbx_prepare, used by th_mbx_commit. */
struct th_mbx_ticket {
    uint32_t rec; /* user record */
    uint32_t gen; /* its gen when prepared */
    uint64_t seq; /* the seq this notification gets */
};

/*
 * Find or make the user's record and tell the seq the next notification
 * gets (nothing is stored yet: render the frame with it, then commit).
 * Making a record may recycle another (see protocol). -EINVAL bad user.
 */
int th_mbx_prepare(struct th_mbx *m, const char *user, size_t ulen, uint64_t now_ns,
                   struct th_mbx_ticket *t);

/*
 * Store the rendered frame under the ticket's seq for ttl_ns (0: do not
 * store, only the seq is kept), with id (idlen 0: none) as its idempotency
 * key. Evicts oldest first: the log's oldest when bytes run out (reason
 * full), the user's oldest past per_user (reason per_user), and reclaims
 * expired entries (reason ttl) on the way. The seq is durable when this
 * returns, and a seq_cst fence orders it before the caller's registry
 * lookup. Returns 0 with *pos the entry's position (0 when not stored),
 * -E2BIG for a frame over TH_MBX_MAX_FRAME or a quarter of the arena,
 * -ESTALE when the ticket's record changed since prepare.
 */
int th_mbx_commit(struct th_mbx *m, const struct th_mbx_ticket *t, const char *frame, size_t len,
                  const char *id, size_t idlen, uint64_t ttl_ns, uint64_t now_ns, uint64_t *pos);

/*
 * A cache of a mailbox kept elsewhere (notifier/mailbox_js.c: JetStream
 * assigns the seqs, the notifier mirrors the stream into this object so
 * the workers resume from it unchanged). th_mbx_prepare_at: like
 * th_mbx_prepare, but the notification's seq is given (seqs need not be
 * contiguous; th_mbx_commit accepts any seq above the user's last). gone:
 * every seq of this user up to it has left the source (the record's
 * dropped is raised to it). Returns 1 with *t to commit, 0 when the user
 * already holds seq or a later one (nothing to do), -errno.
 */
int th_mbx_prepare_at(struct th_mbx *m, const char *user, size_t ulen, uint64_t seq, uint64_t gone,
                      uint64_t now_ns, struct th_mbx_ticket *t);
/*
 * Start the cache over for the source's life named epoch: every record
 * and entry dropped, every floor set to floor (a user met later starts
 * with seq = dropped = floor: everything up to it counts as gone). The
 * epoch is 0 while it runs, so no client's epoch matches a half-reset
 * object (recovered:false is the safe answer then).
 */
void th_mbx_reset(struct th_mbx *m, uint64_t epoch, uint64_t floor);
/*
 * Cache: every source seq up to upto left the source before this cache
 * applied it, and it cannot tell whose it was (expired from the stream
 * ahead of the mirror). Every user whose last seq is below upto gets seq =
 * dropped = upto, every floor rises to upto: a resume from a since below it
 * answers recovered:false (the safe side), one from upto or later is exact.
 * Touches every record: for the rare loss, not for every message.
 */
void th_mbx_gone_upto(struct th_mbx *m, uint64_t upto);
/* Name the object's life (0: none matches; th_mbx_reset's caller sets it once filled). */
void th_mbx_set_epoch(struct th_mbx *m, uint64_t epoch);
/* Cache: every source seq up to seq applied (see counters.source_seq). */
void th_mbx_set_source_seq(struct th_mbx *m, uint64_t seq);
/* Cache: the source's life those seqs count in, and the seq handed on up to. */
void th_mbx_set_source_epoch(struct th_mbx *m, uint64_t epoch);
void th_mbx_set_source_handed(struct th_mbx *m, uint64_t seq);
/*
 * What a previous writer of this cache left: 1 with the source epoch, the
 * seq applied up to and the seq handed on up to (<= applied); 0 when there
 * is none (not a cache, or no source epoch recorded).
 */
int th_mbx_source_left(const struct th_mbx *m, uint64_t *epoch, uint64_t *applied,
                       uint64_t *handed);
/*
 * Any process: 1 with *seq when the object is a cache (everything of the
 * source up to *seq applied) and *epoch_set (its epoch is not 0: filled);
 * 0 when it is a mailbox of its own.
 */
int th_mbx_source(const struct th_mbx *m, uint64_t *seq, int *epoch_set);
/* Is the writer recorded in the header alive (pid and its start time)? A cache whose
   writer is dead is stale: nobody mirrors the source into it. */
int th_mbx_writer_alive(const struct th_mbx *m);

/* Record the outcome of the delivery of entry pos (200 with connections, 202). */
void th_mbx_set_outcome(struct th_mbx *m, uint64_t pos, unsigned status, unsigned connections);

/*
 * Reclaim entries at the log's tail that expired by now (the notifier's 1 s
 * tick), at most TH_MBX_EXPIRE_BATCH per call so a tick never stalls the
 * loop for long (readers skip expired entries anyway). Returns count.
 */
int th_mbx_expire(struct th_mbx *m, uint64_t now_ns);

/* ---- lookups (any process) --------------------------------------------- */

/* An earlier notification with the same id for the same user, still stored. */
struct th_mbx_hit {
    uint64_t pos, seq, expires_ns;
    unsigned status;      /* 200 or 202 as answered, 0 when unknown */
    unsigned connections; /* with 200 */
    int mine;             /* status 0 and written by this writer: its delivery is in flight */
};

/* 1 with *out when (user, id) is stored and unexpired, 0 when not, -errno. */
int th_mbx_find_id(const struct th_mbx *m, const char *user, size_t ulen, const char *id,
                   size_t idlen, uint64_t now_ns, struct th_mbx_hit *out);

/*
 * Copy entry pos's frame into buf (cap >= TH_MBX_MAX_FRAME is always
 * enough). Returns its length, or -ESTALE when it was reclaimed.
 */
ssize_t th_mbx_read_frame(const struct th_mbx *m, uint64_t pos, char *buf, size_t cap);

/* The user's pending (stored, unexpired) count and last seq, for presence. */
int th_mbx_user_info(const struct th_mbx *m, const char *user, size_t ulen, uint64_t now_ns,
                     uint32_t *pending, uint64_t *last_seq);

/*
 * Resume: a snapshot of the user's stored notifications, taken once (a
 * seq_cst fence first, see protocol), then walked with th_mbx_replay_next.
 * The caller owns the struct (about 8 KiB: keep one per worker, not on a
 * small stack).
 */
struct th_mbx_replay {
    uint64_t since;
    uint64_t latest;  /* the user's last seq (0: none this epoch; a floor if recycled) */
    uint64_t dropped; /* record's dropped when snapshotted */
    uint32_t rec, gen;
    int found;      /* the user has a record */
    int unreadable; /* the record stayed mid-change (dead writer): nothing replayed */
    int lost;       /* something with seq > since is gone (expired, evicted, torn) */
    uint32_t n, i;  /* refs snapshotted, next to visit */
    uint64_t refs[TH_MBX_PER_USER_MAX];
};

/* One replayed notification. */
struct th_mbx_item {
    uint64_t seq, pos, stored_ns, expires_ns;
    size_t len; /* frame bytes (copied into buf when buf is not NULL) */
};

/* Take the snapshot (see struct). Returns 0, or -EINVAL for a bad user id. */
int th_mbx_replay_begin(const struct th_mbx *m, const char *user, size_t ulen, uint64_t since,
                        struct th_mbx_replay *rp);
/*
 * The next stored notification with seq > since, in seq order: 1 with *out
 * (and the frame in buf, cap >= TH_MBX_MAX_FRAME, unless buf is NULL), 0 at
 * the end. An entry that expired by now_ns or was reclaimed since the
 * snapshot is skipped and sets rp->lost.
 */
int th_mbx_replay_next(const struct th_mbx *m, struct th_mbx_replay *rp, uint64_t now_ns, char *buf,
                       size_t cap, struct th_mbx_item *out);
/*
 * After the walk: 1 when nothing after since is missing (recovered:true
 * once the caller also checked the epoch), 0 otherwise: since ahead of the
 * user's latest seq, an entry after since evicted or expired (before or
 * during the walk), the record recycled or unreadable.
 */
int th_mbx_replay_end(const struct th_mbx *m, struct th_mbx_replay *rp);

/* For /metrics and tether-dump. */
struct th_mbx_stats {
    uint64_t bytes_total; /* object size */
    uint64_t arena_bytes; /* log capacity */
    uint64_t log_bytes;   /* head - tail: retained, orphaned and expired-not-yet-reclaimed */
    uint64_t bytes;       /* retained by some user */
    uint64_t entries;     /* retained by some user */
    uint64_t oldest_ns;   /* stored_ns of the oldest entry at tail, 0 when empty */
    uint32_t nusers, per_user;
    char epoch[TH_MBX_EPOCH_LEN + 1];
};
void th_mbx_stats(const struct th_mbx *m, struct th_mbx_stats *out);

#endif
