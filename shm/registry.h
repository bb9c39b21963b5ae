/*
 * The connection registry: a fixed-slot table in one POSIX shared-memory
 * segment, mapped by every tether process.
 *
 * Layout (every part starts on a 64-byte boundary; sizes come from
 * th_reg_layout(), overflow-checked):
 *
 *   struct th_reg_hdr     magic, version, sizes, creator, boot epoch,
 *                         worker and role tables, counters
 *   index[]               64-bit words, 4 x slots rounded up to a power
 *                         of two (at least 32), in groups of a count word
 *                         and 15 buckets (128 bytes, 128-aligned: two cache
 *                         lines in one page): user hash -> (owner worker,
 *                         slot), so the notify path finds a user's workers
 *                         without reading any slot (one cache line per
 *                         lookup, usually)
 *   freemap[]             one bit per slot, "probably free" hints for claim
 *   disc[]                recent disconnects: user -> LastSeen after the
 *                         last connection of that user went away
 *   slots[]               struct th_slot, one per connection, 128 bytes
 *
 * CONCURRENCY PROTOCOL (who writes, who reads, what a dead writer leaves)
 *
 * No lock anywhere in the segment: nothing can be left held by a process
 * killed at any instruction. Every shared word is a C11 atomic.
 *
 * slot.ctl (64-bit: generation 32 | who 24 | state 8, see th_ctl_*)
 *   The single source of truth for a slot. Changed only by CAS. "who" is the
 *   owner worker index while FREE/LIVE and the pid of the process doing the
 *   transition (the "actor") while CLAIMING/RELEASING: binding the actor to
 *   the state in one word is what lets a survivor tell a dead actor from a
 *   slow one without a lock.
 *   FREE -> CLAIMING (actor = claimer's pid, generation + 1): claim.
 *   CLAIMING -> LIVE (who = owner worker): all fields and the index entry written.
 *   LIVE -> RELEASING (actor = releaser's pid) -> FREE: release, by the owner
 *   or by anyone holding the handle (janitor for a silent worker, repairers).
 *   Only the actor moves a slot out of CLAIMING/RELEASING. If the actor's pid
 *   is dead, a repairer takes the slot over with one CAS (-> RELEASING with
 *   its own pid) and finishes the release; two repairers cannot both win.
 *   Readers: everybody. A reader copies a slot's fields between two loads of
 *   ctl and keeps the copy only if both loads are equal and LIVE (a seqlock
 *   without a lock: the generation changes on every claim, so a torn copy
 *   of a reused slot is always detected). The claimer writes the fields with
 *   release stores after its CAS and the reader loads them with acquire loads
 *   before its re-check (both plain moves on x86; no fences, which TSan does
 *   not model); user bytes go as 64-bit atomic words, so the deliberate racy
 *   read is defined behaviour.
 *   Dead writer: CLAIMING/RELEASING with a dead actor is finished by
 *   th_reg_repair() (janitor, each sweep) and th_reg_reclaim_worker()
 *   (supervisor after waitpid, the worker's new incarnation at start); LIVE
 *   slots of a dead owner worker (workers[w].pid 0 or dead) are released by
 *   both. Nothing else can be half-done.
 *
 * slot.last_seen: one relaxed atomic store by the owning worker per inbound
 *   frame (th_reg_touch: no lock, no syscall). Read by janitor, notifier,
 *   dump. A dead writer leaves the last complete stamp (64-bit stores do not
 *   tear).
 *
 * slot user/user_hash/conn_id/connected_at/bucket/ticket: written only
 *   while the slot is CLAIMING by the claimer; read under the ctl seqlock
 *   (by every lookup that checks slots, and by the owner worker confirming
 *   a handoff named by user id: th_reg_confirm).
 *
 * THE PER-USER CAP (--max-conns-per-user N) holds however claims interleave,
 *   across processes, without a lock. A claimer (1) fills its slot and index
 *   entry, (2) takes a ticket from hdr->tickets (one fetch_add: tickets are
 *   unique and totally ordered; "older" means a smaller ticket), (3)
 *   publishes LIVE with a seq_cst store, then (4) repeats: gather the user's
 *   live slots (seq_cst loads of buckets and ctl); if there are more than N,
 *   release the one with the smallest ticket (by its handle, whoever owns
 *   it) and gather again. Why it holds: the publish stores and the gather
 *   loads are all seq_cst, so of any two claims of one user the later
 *   publisher's gather sees the earlier one's slot (a store-then-load pair
 *   that can otherwise miss each other through store buffers). The last
 *   claim to publish therefore sees every live slot of the user and does not
 *   stop before at most N remain; earlier claimers only ever remove the
 *   smallest tickets, which the last one would remove too. A claimer whose
 *   own ticket is the smallest past N releases its own slot (th_reg_claim
 *   returns 1: the caller closes that connection with 4001 at once). The
 *   released victims' owners learn it from the claimer (4001 through the
 *   control socket); a worker also closes, at its once-a-second pass after
 *   such a release (counted in its th_proc_sh.released), any connection
 *   whose slot no longer carries its generation, so a lost request leaves
 *   no socket without a slot for long. Over-eviction can happen only when a
 *   victim was also being closed by its client at that moment.
 *   Dead claimer: killed before (3), its slot is CLAIMING with a dead actor,
 *   repaired as above and never counted. Killed after (3), its LIVE slot
 *   belongs to its dead worker and is released by the same repair; until
 *   then the user may hold one slot over N per such dead claimer (slots the
 *   dead claim would have released were seen by any later claim, and the
 *   dead claimer's own slot is the one that goes). Victims it released but
 *   never told the owner about are closed by the owner's slot check (the
 *   released count if it raised it, else the check's slow rotation).
 *
 * index[] (128-byte groups of 16 64-bit words, one group never straddles a
 *   page: word 0 the group's count word, words 1-7 the buckets of its front
 *   cache line, 8-15 those of its back line; a bucket is 0 = empty, else
 *   th_index_entry(hash, worker, slot): an occupied bit, the user's whole
 *   32-bit hash, the owner worker's index (6 bits) and the slot (24 bits),
 *   written in one 64-bit CAS so a reader sees all of it or none). The count
 *   word holds two counts, each changed by atomic RMW on the whole word and
 *   never borrowing from the other: the spill (low 32 bits) and the back
 *   count (high 32). Each user hash has a first and a second group (its
 *   "window", 30 buckets). A claimer CASes an empty bucket of its first group
 *   while that group has at least 6 empty buckets; past that it takes the
 *   emptier of the two (two choices keep any group from filling up, even with
 *   a user's 8 devices in one); within a group, front buckets first. Before
 *   it CASes a bucket of its second group it raises the first group's spill
 *   (seq_cst fetch_add), and before it CASes a back-line bucket it raises
 *   that group's back count (if the CAS then loses, it lowers it again). A
 *   releaser CASes its bucket back to 0 and only then lowers the counts it
 *   raised (back count of the bucket's group; spill of the first group for a
 *   second-group bucket). So, at every instant, spill >= the entries that
 *   spilled from that group and back >= the entries on its back line: a
 *   lookup reads the count word and the front line of its first group (one
 *   cache line, one page: one memory round trip), the back line only when
 *   back > 0 (8% of users at 1M slots half full with 2 devices a user) and
 *   the second group only when spill > 0 (0.4% there, 0.8% full with 1
 *   device, 5% full with 2). The loads and the claimer's fetch_adds and LIVE
 *   publish are seq_cst, so a lookup that starts after a publish sees that
 *   claim's counts (the cap protocol's argument).
 *   Writers: only the claimer of a slot (bucket CAS 0 -> entry while the slot
 *   is CLAIMING, before its LIVE publish) and whoever holds the slot
 *   RELEASING (bucket CAS entry -> 0 before the slot goes FREE: the owner,
 *   the janitor, a cap claimer, a repairer). The worker in an entry is the
 *   worker the claim publishes as the LIVE owner, and a LIVE slot's owner
 *   never changes, so an entry names the owner of every live slot it points
 *   at. An entry pointing at a slot names that slot's current claim or the
 *   one being released: never an older one.
 *   Readers: th_reg_find_owners (the notify path) takes the hash-matching
 *   entries as they are, without touching a slot: each names a worker and a
 *   slot that held a connection of this user or of a user with the same
 *   hash, now or a moment ago. The owner worker confirms each one against
 *   its own slot (th_reg_confirm: LIVE, its own, exactly this id) before it
 *   delivers, and answers "gone" otherwise; a false match (another user
 *   with the same 32-bit hash in the same group: about 1 lookup in 10^9) or
 *   a slot released since costs one handoff and is never a delivery to the
 *   wrong user, and the confirmations a reply counts are exact. The other
 *   readers (th_reg_find_user, th_reg_find_conns, the cap census, last_seen)
 *   confirm each candidate slot under its seqlock themselves.
 *   Dead writer: a claimer dying between the bucket CAS and LIVE leaves a
 *   bucket pointing at a non-LIVE slot: readers that check the slot ignore
 *   it, the owner answers "gone" to a handoff for it, and the repairing
 *   release clears every bucket of the window that points at the slot (safe:
 *   while it holds the slot nobody else can insert that slot number),
 *   lowering the counts as a release does. A process killed between a count
 *   increment and its bucket CAS, or between its bucket clear and the count
 *   decrement, leaves that count one too high: lookups of users whose group
 *   it is read one more line (or group), nothing is missed; nobody repairs
 *   it (a recount could not tell a claim in flight from drift, and too low
 *   would hide connections), and the next group starts from a fresh segment.
 *   A bucket is one 64-bit word written by one CAS: never half an entry.
 *   If both groups are ever full (users with many devices crowding the same
 *   groups: at 1M slots with every user holding 8, from 37% of the slots on;
 *   never seen with 4 or fewer) the slot is marked unindexed and
 *   hdr->unindexed is raised; lookups then also scan the table until it
 *   drops to zero.
 *
 * freemap[] bits: hints only; the slot's ctl decides. Release sets the bit
 *   after FREE, claim clears it after the CAS. A stale hint either costs a
 *   failed CAS (bit set, slot busy: the claimer clears it) or hides a free
 *   slot (bit clear, slot FREE: th_reg_repair sets it again each sweep).
 *
 * disc[] (recent disconnects, direct-mapped by user hash): written by the
 *   releaser of a user's last live connection, read by the notifier for the
 *   404's last_seen. Each entry has its own seqlock word (low 32 bits odd
 *   while being written, high 32 bits the writer's pid then, taken by CAS);
 *   an entry left odd by a dead writer is invalidated by th_reg_repair. A
 *   busy or lost entry only loses a last_seen hint.
 *
 * hdr->used (non-FREE slots; /metrics' tether_connections) / hdr->unindexed:
 *   atomic adds by the winner of each FREE->CLAIMING and RELEASING->FREE CAS
 *   (hdr->transitions is bumped at every ctl CAS). Two words cannot change
 *   together, so a process killed between the CAS and the add leaves them off
 *   by one: th_reg_repair recounts them from the slots and stores the count
 *   (by CAS) when no transition happened during its scan nor in a 2 ms pause
 *   after it, so a drift lasts until a sweep with no claim or release in it.
 *
 * hdr worker/role tables: each entry written by that process (pid, start,
 *   heartbeat) and by the supervisor (reset on reap). Counters: atomic adds.
 *   Heartbeats are stamped at least every TH_HEARTBEAT_NS by every loop
 *   (one relaxed store), so --hung-after (default 3 s) is 30 missed beats.
 *   hung_ns: written only by the supervisor: the wall-clock time it declared
 *   the process hung (stopped, or heartbeat older than --hung-after), 0
 *   while it is not; cleared when the process resumes or is reaped, before
 *   a replacement is forked. Readers go through th_proc_hung(), which
 *   also counts a heartbeat newer than hung_ns as live (resumed, not yet
 *   taken back). Read by the notifier before every handoff (a
 *   hung worker's connections answer at once instead of waiting out the
 *   handoff timeout) and for /healthz, by the janitor (a hung worker is not
 *   asked to evict), by tether-dump. adopter (workers only): written only by
 *   the supervisor: 1 + the index of the live worker told to accept from
 *   this worker's listener while it is out of the steering set (hung, dead
 *   or full), 0 = nobody; read by the workers every loop wake. full
 *   (workers only): written only by that worker, 1 while its connection
 *   table is full and it stopped accepting; read by the supervisor, which
 *   steers new clients elsewhere. A dead supervisor takes the whole group
 *   with it (every child has PR_SET_PDEATHSIG) and the next group
 *   initialises a fresh segment, so a hung_ns or adopter it leaves is never
 *   acted on; a worker that dies with full set is reset on reap.
 *   starved_ns: written only by the supervisor: the wall-clock time it found
 *   the process starved (heartbeat older than --hung-after, but runnable and
 *   waiting for a CPU: left running, and left out of the steering set while
 *   another worker can take clients), 0 while not; cleared when it beats
 *   again and on reap. It sits in what was the entry's padding (the
 *   layout's offsets and sizes are those of version 3, and a segment
 *   made before it reads 0 there). Readers go through th_proc_starved(),
 *   which counts a heartbeat newer than starved_ns as not starved, so a
 *   stamp a dead supervisor left is never believed. Read for /healthz.
 *   released (workers only): raised by one atomic add by whoever releases
 *   a LIVE slot of this worker through th_reg_release without being that
 *   worker's process (a cap claimer in another worker, the janitor), after
 *   the slot is FREE; read by the worker once a second, which then checks
 *   every connection's slot at once instead of waiting for its slow
 *   rotation (a connection whose slot went must not stay open looking
 *   connected). A releaser killed between its release and the add leaves
 *   the count short by one: that connection is found by the worker's
 *   rotation (every slot within a minute) or at its next inbound frame. Also
 *   in the old padding (offset 168, the entry still 192 bytes).
 *   A worker must publish workers[w].pid before its first claim: repair takes
 *   LIVE slots of an index whose pid is 0 or dead for orphans, and it loads
 *   ctl before the pid, so a new incarnation's slots never look orphaned.
 *
 * The segment's creator: th_reg_create refuses (-EBUSY) while the creator
 *   pid lives with the start time it recorded; a dead group's object is
 *   unlinked and a new one created (leftover processes keep the old one).
 *
 * All functions return 0 or a positive count on success and -errno on
 * failure, with a message in err where a human needs one.
 */
#ifndef TETHER_SHM_REGISTRY_H
#define TETHER_SHM_REGISTRY_H

#include <stdatomic.h>
#include <stddef.h> /* offsetof */
#include <stdint.h>
#include <sys/types.h>

#include "shm/proto/userid.h" /* TH_USER_MAX */

#define TH_REG_MAGIC 0x3147455248544554ULL /* "TETHREG1" little-endian */
/* 2: slot ticket, hdr->tickets (the cap protocol); 3: index lines carry a spill count,
 * a slot's line 0 holds what a lookup reads; 4: 64-bit index entries with the owner
 * worker and the whole hash, in 128-byte groups */
#define TH_REG_VERSION 4
#define TH_MAX_WORKERS 64
#define TH_NO_SLOT UINT32_MAX

enum th_slot_state {
    TH_SLOT_FREE = 0,
    TH_SLOT_CLAIMING = 1,
    TH_SLOT_LIVE = 2,
    TH_SLOT_RELEASING = 3
};
enum th_role { TH_ROLE_SUPERVISOR = 0, TH_ROLE_JANITOR, TH_ROLE_NOTIFIER, TH_ROLE_COUNT };

/* One process (worker or role) as the others see it. */
struct th_proc_sh {
    _Atomic int32_t pid;           /* 0 = not running */
    _Atomic uint64_t started_ns;   /* realtime */
    _Atomic uint64_t heartbeat_ns; /* realtime, stamped by the process's loop */
    _Atomic uint64_t restarts;     /* incremented by the supervisor */
    char sock_path[108];           /* workers: control socket (sockaddr_un path) */
    _Atomic uint64_t hung_ns;      /* supervisor: realtime it was declared hung, 0 = not */
    _Atomic int32_t adopter;     /* supervisor: 1 + worker serving this one's listener, 0 = none */
    _Atomic uint32_t full;       /* the worker: 1 while its connection table is full */
    _Atomic uint64_t starved_ns; /* supervisor: realtime it found it starved, 0 = not */
    _Atomic uint64_t released;   /* workers: its LIVE slots released by another process */
} __attribute__((aligned(64)));

/* Every role's loop stamps its heartbeat at least this often. */
#define TH_HEARTBEAT_NS (100ULL * 1000000ULL)

/* Group-wide counters, exported by /metrics. Writers: any process, atomic add. */
struct th_counters_sh {
    _Atomic uint64_t connections_opened;
    _Atomic uint64_t connections_closed;
    _Atomic uint64_t pings; /* app-level {"type":"ping"} */
    _Atomic uint64_t frames_in;
    _Atomic uint64_t acks;
    _Atomic uint64_t notify_delivered;
    _Atomic uint64_t notify_not_connected;
    _Atomic uint64_t notify_unavailable;
    _Atomic uint64_t notify_bad_request;
    _Atomic uint64_t stale_evictions;
    _Atomic uint64_t replaced;      /* closed with 4001 */
    _Atomic uint64_t registry_full; /* claims refused: HTTP 503 */
    _Atomic uint64_t worker_restarts;
    _Atomic uint64_t role_restarts;
    _Atomic uint64_t dead_reclaimed; /* slots reclaimed from dead workers */
    _Atomic uint64_t repairs;        /* half-done transitions completed */
    /* Security refusals (README "Security"). */
    _Atomic uint64_t api_unauthorized; /* API requests answered 401: no or wrong API key */
    _Atomic uint64_t origin_refused;   /* upgrades answered 403: Origin not allowed */
    _Atomic uint64_t rate_limited;     /* connections closed 1008: over a token bucket */
    _Atomic uint64_t token_refused;    /* upgrades answered 401: missing or bad token */
} __attribute__((aligned(64)));

struct th_reg_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t slot_size; /* sizeof(struct th_slot), checked on attach */
    uint64_t total_size;
    uint32_t nslots;
    uint32_t nbuckets;           /* 64-bit index words (spill counts and buckets), power of two */
    uint32_t ndisc;              /* power of two */
    uint32_t nworkers;           /* configured workers */
    _Atomic int32_t creator_pid; /* the supervisor that initialised it */
    uint64_t creator_start;      /* its start time (/proc/pid/stat field 22), against pid reuse */
    uint64_t boot_epoch;         /* random, new on every initialisation */
    uint64_t created_ns;
    uint64_t off_index, off_freemap, off_disc, off_slots;
    _Atomic uint32_t used;                 /* non-FREE slots; see the protocol on drift */
    _Atomic uint32_t unindexed;            /* slots whose index window was full */
    uint32_t reserved;                     /* unused (keeps the layout of version 1) */
    uint32_t stale_after_s, sweep_every_s; /* informational, for the dump */
    _Atomic uint64_t transitions;          /* bumped by every claim and release CAS */
    _Atomic uint64_t tickets;              /* claim tickets: next one is tickets + 1 */
    struct th_proc_sh workers[TH_MAX_WORKERS];
    struct th_proc_sh roles[TH_ROLE_COUNT];
    struct th_counters_sh counters;
} __attribute__((aligned(64)));

/*
 * Line 0 holds everything a confirmation by user reads (state, owner,
 * conn_id, the id's length and its first 48 bytes: th_reg_confirm, run by
 * the owner worker for each handoff, and th_reg_find_conns), so confirming a
 * user whose id is at most 48 bytes costs one cache line of the slot. Line 1 holds what changes
 * often (last_seen, stamped on every inbound frame) or is read rarely, so a worker's touch never
 * invalidates the line the notifier looks up.
 */
struct th_slot {
    _Atomic uint64_t ctl;     /* see protocol above */
    _Atomic uint32_t conn_id; /* the owning worker's own connection index */
    _Atomic uint8_t user_len;
    uint8_t pad_[3];
    char user[TH_USER_MAX]
        __attribute__((aligned(8))); /* words: see protocol; not NUL-terminated, 0-padded */
    /* line 1 from here (user bytes 48-63 spill into it) */
    _Atomic uint64_t last_seen;    /* realtime ns */
    _Atomic uint64_t connected_at; /* realtime ns */
    _Atomic uint64_t ticket;       /* claim order for the per-user cap (smaller = older) */
    _Atomic uint32_t user_hash;
    _Atomic uint32_t bucket; /* index bucket holding this slot, or TH_NO_SLOT */
    _Atomic uint32_t flags;  /* TH_SLOT_F_UNINDEXED */
} __attribute__((aligned(64)));

_Static_assert(sizeof(struct th_slot) == 128, "a slot is two cache lines");
/* User id bytes on the slot's first line: ids up to this long are looked up in one line. */
#define TH_SLOT_HOT_USER 48
_Static_assert(offsetof(struct th_slot, user) + TH_SLOT_HOT_USER == 64, "line 0 ends there");
_Static_assert(offsetof(struct th_slot, last_seen) >= 64, "touch writes line 1 only");

#define TH_SLOT_F_UNINDEXED 1u

/* A disconnect record: the last LastSeen of a user with no live connection. */
struct th_disc {
    _Atomic uint64_t seq; /* low 32: odd while being written; high 32: writer pid then */
    _Atomic uint64_t last_seen;
    _Atomic uint32_t user_hash;
    _Atomic uint8_t user_len;
    char user[TH_USER_MAX] __attribute__((aligned(8)));
};

/* A process's handle on the mapped segment (not shared). */
struct th_reg {
    void *base;
    size_t size;
    int writable;
    struct th_reg_hdr *hdr;
    _Atomic uint64_t *index;
    _Atomic uint64_t *freemap;
    struct th_disc *disc;
    struct th_slot *slots;
    uint32_t cursor; /* this process's freemap scan position */
};

/* What a claim returns: enough to touch, release and check for reuse. */
struct th_handle {
    uint32_t slot;
    uint32_t gen;
};

/* A consistent copy of one live slot. */
struct th_conn_info {
    uint32_t slot;
    uint32_t gen;
    uint16_t worker;
    uint32_t conn_id;
    uint64_t connected_at;
    uint64_t last_seen;
    uint64_t ticket;
    size_t user_len;
    char user[TH_USER_MAX + 1]; /* NUL-terminated copy */
};

/* A connection a claim released to keep its user within the cap (the caller closes it, 4001). */
typedef void (*th_reg_evict_fn)(const struct th_conn_info *victim, void *arg);

/* Bytes the segment needs for nslots; 0 on overflow. */
size_t th_reg_layout(uint32_t nslots, struct th_reg_hdr *out_hdr_template);

/*
 * Supervisor: create the segment, or take over one whose creator is dead
 * (re-initialised, new boot epoch). Refuses (-EBUSY, clear message) a segment
 * whose creator is alive. Mode 0600.
 */
int th_reg_create(struct th_reg *r, const char *name, uint32_t nslots, char *err, size_t errlen);
/*
 * Everybody else: map an existing segment. Checks magic, version, slot size
 * and total size against the file before touching anything else; refuses
 * (-EPROTO / -EINVAL, clear message) a mismatch. writable = 0 maps O_RDONLY
 * and PROT_READ (the dump tool).
 */
int th_reg_attach(struct th_reg *r, const char *name, int writable, char *err, size_t errlen);
void th_reg_detach(struct th_reg *r);
int th_reg_unlink(const char *name);

/*
 * Claim a slot for (user, worker, conn_id) with connected_at = last_seen = now.
 * With cap > 0 the user then holds at most cap live slots (see THE PER-USER
 * CAP above): each older slot released to get there is passed to evicted(),
 * if given, after its release (its owner must be told to close it with
 * 4001; counters are the caller's). Returns 0 (*out holds the slot), 1 when
 * the new slot itself was the oldest past the cap and is already released
 * (*out names it; the caller completes the upgrade and closes with 4001, or
 * refuses), -ENOSPC when the registry is full (HTTP 503), -EINVAL for a bad
 * user id (empty, over 64 bytes) or a worker index >= TH_MAX_WORKERS, -EROFS
 * on a read-only mapping. Counters (connections_opened, registry_full, ...)
 * are the caller's to bump.
 */
int th_reg_claim(struct th_reg *r, const char *user, size_t ulen, uint16_t worker, uint32_t conn_id,
                 uint64_t now_ns, uint32_t cap, struct th_handle *out, th_reg_evict_fn evicted,
                 void *arg);

/* LastSeen := now. One relaxed store: the worker owns the slot. */
static inline void th_reg_touch(struct th_reg *r, struct th_handle h, uint64_t now_ns)
{
    atomic_store_explicit(&r->slots[h.slot].last_seen, now_ns, memory_order_relaxed);
}

/*
 * Release the slot if it still carries h.gen. Records a disconnect entry when
 * it was the user's last live connection. Any process may call it (a
 * repairer releasing for a dead owner). Returns 0, or -ESTALE when the slot
 * was already released or reused.
 */
int th_reg_release(struct th_reg *r, struct th_handle h);

/* Consistent copy of slot i if it is LIVE: 1, else 0. */
int th_reg_read(const struct th_reg *r, uint32_t slot, struct th_conn_info *out);

/* Every live slot of a user (up to max), without scanning the table. Returns count. */
int th_reg_find_user(const struct th_reg *r, const char *user, size_t ulen,
                     struct th_conn_info *out, int max);

/* What the notify path needs of a live connection: where it is and who owns it. */
struct th_conn_ref {
    uint32_t slot;
    uint32_t gen;
    uint16_t worker;
    uint32_t conn_id;
};

/*
 * Every live slot of a user (up to max), like th_reg_find_user but copying
 * only line 0 of each slot (struct th_slot): for an id of at most
 * TH_SLOT_HOT_USER bytes a present user costs its index group and one line
 * per connection. Exact (each slot confirmed here, gen known): for callers
 * that must read the slots anyway (the JetStream catch-up filters on
 * connected_at); the notify path uses th_reg_find_owners. Returns the count,
 * at most max.
 */
int th_reg_find_conns(const struct th_reg *r, const char *user, size_t ulen,
                      struct th_conn_ref *out, int max);

/* A candidate connection as the index names it: its slot and owner worker, not yet confirmed. */
struct th_owner_ref {
    uint32_t slot;
    uint16_t worker;
};

/*
 * The notify path's lookup: every index entry of a user (up to max) as
 * (slot, owner worker), read from the user's index group alone (usually one
 * group of two adjacent lines, one page: one memory round trip), no slot
 * touched. A candidate is not yet a connection: it may be a slot released a
 * moment ago or, rarely, another user with the same hash; the owner worker
 * decides with th_reg_confirm before it delivers (TH_HO_F_USER,
 * shm/rt/channel.h). While some slot is unindexed (hdr->unindexed > 0,
 * rare) the table scan adds the unindexed slots that hold this user.
 * Returns the count, at most max.
 */
int th_reg_find_owners(const struct th_reg *r, const char *user, size_t ulen,
                       struct th_owner_ref *out, int max);

/*
 * The owner's check of a candidate: is slot LIVE, owned by worker, and held
 * by exactly this user id? Reads line 0 of the slot (and line 1 for an id
 * longer than TH_SLOT_HOT_USER) under the seqlock. Returns 1 with *out (its
 * handle, gen included, and conn_id), else 0.
 */
int th_reg_confirm(const struct th_reg *r, uint32_t slot, uint16_t worker, const char *user,
                   size_t ulen, struct th_conn_ref *out);

/*
 * Start fetching what a lookup of the user with this hash (th_user_hash)
 * will read, without waiting for it and with no effect on any result: with
 * slots = 0 its index group (both lines); with slots = 1 its second group
 * when the first one's spill count says it will be read (the first group
 * should have arrived by then: call it a few users after the slots = 0
 * call). th_reg_find_owners reads nothing else. A caller with several users
 * to look up (a batch) runs this pipeline a few users ahead, so their cache
 * and TLB misses overlap instead of queueing.
 */
void th_reg_prefetch_user(const struct th_reg *r, uint32_t hash, int slots);

/*
 * Latest LastSeen known for a user: over its live slots, else its disconnect
 * record. Returns 1 with *ns set, 0 if never seen (or forgotten).
 */
int th_reg_last_seen(const struct th_reg *r, const char *user, size_t ulen, uint64_t *ns);

/* Visit every live slot in slot order; stop early if fn returns nonzero. */
typedef int (*th_reg_visit_fn)(const struct th_conn_info *ci, void *arg);
void th_reg_foreach(const struct th_reg *r, th_reg_visit_fn fn, void *arg);
/*
 * The same over slots [first, first + count) (clipped to the table), for a
 * caller that spreads one pass over several steps; returns the slot to go
 * on from (the table's size once the pass is done).
 */
uint32_t th_reg_foreach_range(const struct th_reg *r, uint32_t first, uint32_t count,
                              th_reg_visit_fn fn, void *arg);

/*
 * Release every LIVE slot owned by a worker index, and finish any slot left
 * CLAIMING/RELEASING by a dead process. Call it only when that worker index
 * has no live process (after waitpid, or in the new incarnation before its
 * first claim). Returns slots released. Counters are the caller's.
 */
int th_reg_reclaim_worker(struct th_reg *r, uint16_t worker);

/*
 * Sweep-time repair: release slots whose owner worker is not alive (pid 0 or
 * dead), finish transitions left half-done by dead writers, reset disconnect
 * entries left odd, restore freemap hints, correct hdr->used/unindexed
 * drift. A worker index whose workers[w].pid is 0 counts as dead. Bumps
 * counters.repairs for each half-done transition it finished. Returns slots
 * released.
 */
int th_reg_repair(struct th_reg *r);

/* Is this pid alive (kill(pid, 0) succeeds or fails with EPERM, and not a zombie)? */
int th_pid_alive(pid_t pid);
/*
 * Declared hung by the supervisor (hung_ns) and silent since: a process that
 * beat again after the declaration (SIGCONT) is treated as live at once, in
 * the up-to-100 ms before the supervisor's next pass takes it back. Both
 * stamps are th_now_ns().
 */
static inline int th_proc_hung(const struct th_proc_sh *p)
{
    uint64_t hung = atomic_load_explicit(&p->hung_ns, memory_order_acquire);
    return hung && atomic_load_explicit(&p->heartbeat_ns, memory_order_relaxed) <= hung;
}
/* Found starved by the supervisor (starved_ns) and not beaten since (see th_proc_hung). */
static inline int th_proc_starved(const struct th_proc_sh *p)
{
    uint64_t st = atomic_load_explicit(&p->starved_ns, memory_order_acquire);
    return st && atomic_load_explicit(&p->heartbeat_ns, memory_order_relaxed) <= st;
}
/*
 * Field 3 (state letter: R, S, D, T, Z, ...) and field 22 (start time, clock
 * ticks after boot) of /proc/PID/stat; *state 0 and 0 returned when
 * unreadable (gone, or no /proc). The one parser of that file. A process
 * that is exiting (PF_EXITING in field 9: killed, its threads and files
 * being torn down, its sockets closing, but not yet a zombie and shown R
 * or D) reads as 'X': it never runs user code again, and for milliseconds
 * after a kill -9 of a big process it would otherwise look alive.
 */
uint64_t th_proc_stat(pid_t pid, char *state);
/* Start time of pid in clock ticks since boot (/proc/pid/stat field 22), 0 if unknown. */
uint64_t th_proc_start_time(pid_t pid);
/*
 * Is the process that recorded (pid, start) still the one running under pid?
 * A pid reused by another process has another start time; a zombie (dead,
 * not yet reaped) will never run again: both count as dead. Unknown: alive.
 */
int th_pid_alive_since(pid_t pid, uint64_t start);

/* Hash of a user id (also the index and disconnect-record key). */
uint32_t th_user_hash(const char *user, size_t ulen);

/*
 * Diagnostics (tether-dump): an unchecked copy of slot i in any state, its
 * fields possibly half-written by a claim or release in progress. Returns the
 * ctl word it saw. Never use it to make a decision; use th_reg_read.
 */
uint64_t th_reg_peek(const struct th_reg *r, uint32_t slot, struct th_conn_info *out);

/* Number of non-FREE slots counted from the slots themselves (a full scan). */
uint32_t th_reg_count_used(const struct th_reg *r);

/* Readable name of a slot state ("free", "claiming", "live", "releasing"). */
const char *th_slot_state_name(unsigned state);

/*
 * Index entries (64-bit): occupied bit 63, the user's 32-bit hash in bits
 * 30-61, the owner worker in bits 24-29, the slot in the low 24 bits.
 */
#define TH_INDEX_SLOT_BITS 24
#define TH_INDEX_WORKER_SHIFT 24
#define TH_INDEX_HASH_SHIFT 30
_Static_assert(TH_MAX_WORKERS <= 1 << (TH_INDEX_HASH_SHIFT - TH_INDEX_WORKER_SHIFT),
               "a worker index fits an index entry");
static inline uint64_t th_index_entry(uint32_t hash, uint16_t worker, uint32_t slot)
{
    return 1ull << 63 | (uint64_t)hash << TH_INDEX_HASH_SHIFT |
           (uint64_t)(worker & (TH_MAX_WORKERS - 1)) << TH_INDEX_WORKER_SHIFT | slot;
}
/* The slot an entry points at, or TH_NO_SLOT for an empty bucket. */
static inline uint32_t th_index_slot(uint64_t entry)
{
    return entry ? (uint32_t)entry & ((1u << TH_INDEX_SLOT_BITS) - 1) : TH_NO_SLOT;
}
static inline uint16_t th_index_worker(uint64_t entry)
{
    return (uint16_t)((entry >> TH_INDEX_WORKER_SHIFT) & (TH_MAX_WORKERS - 1));
}
static inline int th_index_tag_matches(uint64_t entry, uint32_t hash)
{
    return (uint32_t)(entry >> TH_INDEX_HASH_SHIFT) == hash;
}

/* ctl word helpers. th_ctl_owner is meaningful only while FREE or LIVE. */
static inline uint32_t th_ctl_gen(uint64_t c)
{
    return (uint32_t)(c >> 32);
}
static inline uint16_t th_ctl_owner(uint64_t c)
{
    return (uint16_t)(c >> 16);
}
static inline uint8_t th_ctl_state(uint64_t c)
{
    return (uint8_t)(c >> 8);
}
/* The actor pid of a CLAIMING/RELEASING slot: owner bits and the low byte together. */
static inline pid_t th_ctl_actor(uint64_t c)
{
    return (pid_t)((((uint32_t)c >> 16) << 8) | (c & 0xff));
}
static inline uint64_t th_ctl_make(uint32_t gen, uint16_t owner, uint8_t state)
{
    return ((uint64_t)gen << 32) | ((uint64_t)owner << 16) | ((uint64_t)state << 8);
}
static inline uint64_t th_ctl_make_actor(uint32_t gen, pid_t pid, uint8_t state)
{
    uint32_t p = (uint32_t)pid & 0xffffffu; /* pid_max is at most 2^22 on Linux */
    return ((uint64_t)gen << 32) | ((uint64_t)(p >> 8) << 16) | ((uint64_t)state << 8) | (p & 0xff);
}

#endif
