/*
 * The mailbox object's life cycle: size it, re-attach to the one a previous
 * group left (same layout, same boot, no live writer: same epoch) or make a
 * new one, map it (read-write for the group, read-only for the dump tool),
 * check a header before trusting anything behind it; and the seqlocked
 * copies every reader uses. The writer is in mailbox_write.c, lookups and
 * replay in mailbox_read.c; the protocol they follow is in mailbox.h.
 */
#include "shm/mailbox_impl.h"

_Static_assert(sizeof(struct th_mbx_counters_sh) == 128, "counters block: layout version 2");

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int th_mbx_name(const char *shm_name, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "%s%s", shm_name, TH_MBX_SUFFIX);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

/* ---- sizes ---------------------------------------------------------------- */

static size_t align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

static uint32_t pow2_floor(uint64_t n)
{
    uint32_t p = 1;
    while ((uint64_t)p * 2 <= n && p < (1u << 30))
        p <<= 1;
    return p;
}

/*
 * Header, floors, records, then the arena takes what is left of p->bytes.
 * Records get at most a quarter of the object when derived, half when asked
 * for, and the arena at least half.
 */
size_t th_mbx_layout(const struct th_mbx_params *p, struct th_mbx_hdr *out)
{
    if (!p || p->bytes < TH_MBX_BYTES_MIN || p->bytes > (1ull << 40) || p->per_user == 0 ||
        p->per_user > TH_MBX_PER_USER_MAX)
        return 0;
    size_t total = (size_t)p->bytes & ~(size_t)63;
    size_t rec_size = align64(sizeof(struct th_mbx_user) + (size_t)p->per_user * sizeof(uint64_t));
    uint64_t users = p->users ? p->users : total / 4 / (rec_size + 16);
    uint32_t nusers = pow2_floor(users < 64 ? 64 : users);
    if (p->users && nusers < p->users && nusers < (1u << 30))
        nusers *= 2; /* asked for: round up */
    size_t off_floors = align64(sizeof(struct th_mbx_hdr));
    size_t nfloors = (size_t)nusers * 2;
    size_t off_users = align64(off_floors + nfloors * sizeof(uint64_t));
    size_t off_arena = align64(off_users + (size_t)nusers * rec_size);
    if (off_arena > total / 2)
        return 0;
    if (out) {
        memset(out, 0, sizeof(*out));
        out->magic = TH_MBX_MAGIC;
        out->version = TH_MBX_VERSION;
        out->per_user = p->per_user;
        out->total_size = total;
        out->arena_bytes = total - off_arena;
        out->nusers = nusers;
        out->rec_size = (uint32_t)rec_size;
        out->nfloors = (uint32_t)nfloors;
        out->off_floors = off_floors;
        out->off_users = off_users;
        out->off_arena = off_arena;
    }
    return total;
}

/* ---- shared helpers ------------------------------------------------------- */

void th_mbx_words_load(char *dst, const _Atomic uint64_t *src, size_t n)
{
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        uint64_t v = th_mbx_ld(&src[k / 8]);
        memcpy(dst + k, &v, 8);
    }
    if (k < n) {
        uint64_t v = th_mbx_ld(&src[k / 8]);
        memcpy(dst + k, &v, n - k);
    }
}

void th_mbx_words_store(_Atomic uint64_t *dst, const char *src, size_t n)
{
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        uint64_t v;
        memcpy(&v, src + k, 8);
        th_mbx_st(&dst[k / 8], v);
    }
    if (k < n) {
        uint64_t v = 0;
        memcpy(&v, src + k, n - k);
        th_mbx_st(&dst[k / 8], v);
    }
}

int th_mbx_writer_alive(const struct th_mbx *m)
{
    int32_t pid = atomic_load_explicit(&m->hdr->writer_pid, memory_order_acquire);
    return pid > 0 && th_pid_alive_since(pid, atomic_load(&m->hdr->writer_start));
}

#define REC_SPINS 1000

int th_mbx_rec_read(const struct th_mbx *m, uint32_t i, struct th_mbx_rec_copy *c)
{
    struct th_mbx_user *r = th_mbx_rec(m, i);
    uint32_t per = m->hdr->per_user;
    for (unsigned tries = 0;; tries++) {
        uint64_t v1 = th_mbx_ld(&r->ver);
        c->torn = 0;
        if (v1 & 1) {
            if (tries < REC_SPINS) {
                if (tries > 100)
                    sched_yield();
                continue;
            }
            if (th_mbx_writer_alive(m))
                return -EAGAIN;
            c->torn = 1; /* a dead writer's change: nothing moves it any more */
        }
        c->seq = th_mbx_ld(&r->seq);
        c->dropped = th_mbx_ld(&r->dropped);
        c->last_exp_ns = th_mbx_ld(&r->last_exp_ns);
        c->head = th_mbx_ld(&r->head);
        c->tail = th_mbx_ld(&r->tail);
        c->gen = th_mbx_ld32(&r->gen);
        c->user_hash = th_mbx_ld32(&r->user_hash);
        c->user_len = th_mbx_ld32(&r->user_len);
        th_mbx_words_load(c->user, (const _Atomic uint64_t *)(const void *)r->user, TH_USER_MAX);
        c->nrefs = 0;
        if (c->tail <= c->head && c->head - c->tail <= per && c->refs) {
            for (uint64_t k = c->tail; k < c->head; k++)
                c->refs[c->nrefs++] = th_mbx_ld(&r->ring[k % per]);
        } else if (!(c->tail <= c->head && c->head - c->tail <= per)) {
            c->tail = c->head > per ? c->head - per : 0; /* torn counters: keep what fits */
            if (c->torn && c->refs)
                for (uint64_t k = c->tail; k < c->head; k++)
                    c->refs[c->nrefs++] = th_mbx_ld(&r->ring[k % per]);
        }
        uint64_t v2 = th_mbx_ld(&r->ver);
        if (v1 == v2 && (!(v1 & 1) || c->torn))
            return 0;
    }
}

uint32_t th_mbx_rec_find(const struct th_mbx *m, const char *user, size_t ulen, uint32_t hash,
                         struct th_mbx_rec_copy *c)
{
    for (uint32_t k = 0; k < TH_MBX_PROBE; k++) {
        uint32_t i = th_mbx_probe(m, hash, k);
        struct th_mbx_user *r = th_mbx_rec(m, i);
        /* Cheap filter before the seqlocked copy: most records of the window are other users'. */
        if (th_mbx_ld32(&r->user_hash) != hash || th_mbx_ld32(&r->user_len) != ulen)
            continue;
        if (th_mbx_rec_read(m, i, c) < 0)
            continue;
        if (c->user_hash == hash && c->user_len == ulen && memcmp(c->user, user, ulen) == 0)
            return i;
    }
    return TH_MBX_NONE;
}

int th_mbx_ent_read(const struct th_mbx *m, uint64_t pos, struct th_mbx_ent_copy *c)
{
    const struct th_mbx_hdr *h = m->hdr;
    if (pos == 0 || pos % 64 || pos < th_mbx_ld(&h->tail) || pos >= th_mbx_ld(&h->head))
        return 0;
    struct th_mbx_entry *e = th_mbx_ent(m, pos);
    if (th_mbx_ld(&e->pos) != pos)
        return 0;
    c->seq = th_mbx_ld(&e->seq);
    c->stored_ns = th_mbx_ld(&e->stored_ns);
    c->expires_ns = th_mbx_ld(&e->expires_ns);
    c->outcome = th_mbx_ld(&e->outcome);
    c->size = th_mbx_ld32(&e->size);
    c->rec = th_mbx_ld32(&e->rec);
    c->len = th_mbx_ld32(&e->len);
    c->connections = th_mbx_ld32(&e->connections);
    c->id_hash = th_mbx_ld32(&e->id_hash);
    c->idlen = atomic_load_explicit(&e->idlen, memory_order_acquire);
    c->flags = atomic_load_explicit(&e->flags, memory_order_acquire);
    if (!th_mbx_ent_still(m, pos))
        return 0;
    /* A committed entry always has sane sizes; anything else is not one. */
    uint64_t off = pos % h->arena_bytes;
    if (c->size < sizeof(struct th_mbx_entry) || c->size % 64 || off + c->size > h->arena_bytes)
        return 0;
    if (!(c->flags & TH_MBX_E_PAD) &&
        (c->idlen > TH_MBX_MAX_ID || c->len > TH_MBX_MAX_FRAME || c->rec >= h->nusers ||
         sizeof(struct th_mbx_entry) + th_mbx_align8(c->idlen) + c->len > c->size))
        return 0;
    return 1;
}

int th_mbx_ent_still(const struct th_mbx *m, uint64_t pos)
{
    struct th_mbx_entry *e = th_mbx_ent(m, pos);
    /* Loads of the copy above are acquire: they cannot move below these. */
    return th_mbx_ld(&m->hdr->tail) <= pos && th_mbx_ld(&e->pos) == pos;
}

/* ---- the object --------------------------------------------------------- */

static void bind(struct th_mbx *m, void *base, size_t size, int writable)
{
    memset(m, 0, sizeof(*m));
    m->base = base;
    m->size = size;
    m->writable = writable;
    m->hdr = base;
    m->floors = (_Atomic uint64_t *)(void *)((char *)base + m->hdr->off_floors);
    m->users = (unsigned char *)base + m->hdr->off_users;
    m->arena = (unsigned char *)base + m->hdr->off_arena;
}

static void boot_id(char out[40])
{
    memset(out, 0, 40);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, out, 39);
    close(fd);
    if (n > 0 && out[n - 1] == '\n')
        out[n - 1] = 0;
}

/* Read and check a header against the file it came from. */
static int hdr_check(int fd, const char *name, struct th_mbx_hdr *h, char *err, size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if ((size_t)st.st_size < sizeof(*h) || pread(fd, h, sizeof(*h), 0) != (ssize_t)sizeof(*h)) {
        set_err(err, errlen, "mailbox %s: too small for a header", name);
        return -EPROTO;
    }
    if (h->magic != TH_MBX_MAGIC || h->version != TH_MBX_VERSION) {
        set_err(err, errlen, "mailbox %s: not a tether mailbox of layout version %d", name,
                TH_MBX_VERSION);
        return -EPROTO;
    }
    if (h->total_size != (uint64_t)st.st_size || h->nusers == 0 || (h->nusers & (h->nusers - 1)) ||
        h->off_arena + h->arena_bytes != h->total_size || h->arena_bytes % 64 || h->per_user == 0 ||
        h->per_user > TH_MBX_PER_USER_MAX ||
        h->off_users + (uint64_t)h->nusers * h->rec_size > h->off_arena ||
        h->off_floors + (uint64_t)h->nfloors * 8 > h->off_users ||
        h->rec_size < sizeof(struct th_mbx_user) + (uint64_t)h->per_user * 8) {
        set_err(err, errlen, "mailbox %s: inconsistent sizes in its header", name);
        return -EPROTO;
    }
    if (atomic_load(&h->ready) != 1) {
        set_err(err, errlen, "mailbox %s: never finished initialising", name);
        return -EPROTO;
    }
    return 0;
}

static int map_fd(struct th_mbx *m, int fd, size_t size, int writable)
{
    void *base = mmap(NULL, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return -errno;
    bind(m, base, size, writable);
    return 0;
}

int th_mbx_attach(struct th_mbx *m, const char *shm_name, int writable, char *err, size_t errlen)
{
    char name[TH_MBX_NAME_MAX];
    struct th_mbx_hdr h;
    if (th_mbx_name(shm_name, name, sizeof(name)) < 0)
        return -ENAMETOOLONG;
    int fd = shm_open(name, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC, 0);
    if (fd < 0) {
        int rc = -errno;
        set_err(err, errlen, "mailbox %s: %s", name, strerror(errno));
        return rc;
    }
    int rc = hdr_check(fd, name, &h, err, errlen);
    if (rc == 0 && (rc = map_fd(m, fd, h.total_size, writable)) < 0)
        set_err(err, errlen, "mailbox %s: mmap: %s", name, strerror(-rc));
    close(fd);
    return rc;
}

void th_mbx_detach(struct th_mbx *m)
{
    if (m->base)
        munmap(m->base, m->size);
    memset(m, 0, sizeof(*m));
}

int th_mbx_unlink(const char *shm_name)
{
    char name[TH_MBX_NAME_MAX];
    if (th_mbx_name(shm_name, name, sizeof(name)) < 0)
        return -ENAMETOOLONG;
    return shm_unlink(name) < 0 ? -errno : 0;
}

void th_mbx_epoch(const struct th_mbx *m, char out[TH_MBX_EPOCH_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t e = m->hdr->epoch;
    for (int i = 0; i < TH_MBX_EPOCH_LEN; i++)
        out[i] = hex[(e >> (60 - 4 * i)) & 15];
    out[TH_MBX_EPOCH_LEN] = 0;
}

/* Why an existing mailbox cannot be kept, or NULL when it can. */
static const char *why_not_reuse(int fd, const char *name, const struct th_mbx_hdr *want, char *err,
                                 size_t errlen)
{
    struct th_mbx_hdr h;
    char boot[40];
    if (hdr_check(fd, name, &h, err, errlen) < 0)
        return err;
    if (h.total_size != want->total_size || h.per_user != want->per_user ||
        h.nusers != want->nusers || h.arena_bytes != want->arena_bytes ||
        h.rec_size != want->rec_size || h.nfloors != want->nfloors)
        return "its layout differs (--mailbox-bytes or --mailbox-per-user changed)";
    boot_id(boot);
    if (memcmp(boot, h.boot_id, sizeof(boot)) != 0)
        return "it was made before the last reboot";
    if (h.writer_pid > 0 && th_pid_alive_since(h.writer_pid, h.writer_start) &&
        h.writer_pid != getpid())
        return "a process of an earlier group still writes it";
    return NULL;
}

static int create_new(struct th_mbx *m, const char *name, const struct th_mbx_hdr *tmpl, char *err,
                      size_t errlen)
{
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        int rc = -errno;
        set_err(err, errlen, "mailbox %s: shm_open: %s", name, strerror(errno));
        return rc;
    }
    int rc = 0;
    /*
     * The object stays sparse (pages are taken as the log first fills, and
     * a leftover mailbox costs only what was stored), but a tmpfs that
     * cannot hold --mailbox-bytes at all (a container's 64 MiB /dev/shm)
     * stops the start here with a message rather than SIGBUS the notifier
     * the day the log first fills up.
     */
    struct statvfs vfs;
    if (fstatvfs(fd, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < tmpl->total_size) {
        rc = -ENOSPC;
        set_err(err, errlen,
                "mailbox %s: --mailbox-bytes %.1f MiB, but only %.1f MiB of shared "
                "memory is free",
                name, (double)tmpl->total_size / (1 << 20),
                (double)vfs.f_bavail * vfs.f_frsize / (1 << 20));
    } else if (ftruncate(fd, (off_t)tmpl->total_size) < 0) {
        rc = -errno;
        set_err(err, errlen, "mailbox %s: ftruncate: %s", name, strerror(errno));
    } else if ((rc = map_fd(m, fd, tmpl->total_size, 1)) < 0) {
        set_err(err, errlen, "mailbox %s: mmap: %s", name, strerror(-rc));
    }
    close(fd);
    if (rc < 0) {
        shm_unlink(name);
        return rc;
    }
    struct th_mbx_hdr *h = m->hdr;
    memcpy(h, tmpl, sizeof(*h));
    bind(m, m->base, m->size, 1);
    if (getrandom(&h->epoch, sizeof(h->epoch), 0) != sizeof(h->epoch)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        h->epoch = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    boot_id(h->boot_id);
    atomic_store(&h->busy_rec, TH_MBX_NONE);
    atomic_store(&h->head, 64); /* position 0 means "none" */
    atomic_store(&h->tail, 64);
    atomic_store(&h->ready, 1);
    return 0;
}

int th_mbx_open(struct th_mbx *m, const char *shm_name, const struct th_mbx_params *p, int *reused,
                char *err, size_t errlen)
{
    char name[TH_MBX_NAME_MAX], replaced[320] = "";
    struct th_mbx_hdr tmpl;
    *reused = 0;
    set_err(err, errlen, "%s", "");
    if (th_mbx_name(shm_name, name, sizeof(name)) < 0) {
        set_err(err, errlen, "mailbox name for %s too long", shm_name);
        return -ENAMETOOLONG;
    }
    if (th_mbx_layout(p, &tmpl) == 0) {
        set_err(err, errlen, "mailbox: --mailbox-bytes %llu too small for --mailbox-per-user %u",
                (unsigned long long)(p ? p->bytes : 0), p ? p->per_user : 0);
        return -EINVAL;
    }
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0 && errno != ENOENT) {
        int rc = -errno;
        set_err(err, errlen, "mailbox %s: shm_open: %s", name, strerror(errno));
        return rc;
    }
    if (fd >= 0) {
        char why[256] = "";
        const char *no = why_not_reuse(fd, name, &tmpl, why, sizeof(why));
        if (!no) {
            int rc = map_fd(m, fd, tmpl.total_size, 1);
            close(fd);
            if (rc == 0) {
                *reused = 1;
                return 0;
            }
            no = "it cannot be mapped";
        } else {
            close(fd);
        }
        snprintf(replaced, sizeof(replaced), "mailbox %s not kept (%s): new epoch", name, no);
        if (shm_unlink(name) < 0 && errno != ENOENT) {
            int rc = -errno;
            set_err(err, errlen, "mailbox %s: shm_unlink: %s", name, strerror(errno));
            return rc;
        }
    }
    int rc = create_new(m, name, &tmpl, err, errlen);
    if (rc == 0)
        set_err(err, errlen, "%s", replaced); /* why an old one was replaced, if one was */
    return rc;
}
