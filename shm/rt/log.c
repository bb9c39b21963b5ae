/*
 * The logger behind shm/rt/log.h: formats a whole line in a stack buffer and
 * hands it to the kernel in one write(2), so concurrent processes appending
 * to the same file or pipe produce whole lines.
 */
#include "shm/rt/log.h"
#include "shm/rt/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int th_log_level_now = TH_LOG_INFO;
static int log_format = TH_LOG_TEXT;
static int log_fd = STDERR_FILENO;
static char log_path[4096];
static char log_role[32] = "tether";

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
static const char *const level_lower[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"text", "json"};

const char *th_log_level_name(int level)
{
    return level >= 0 && level <= TH_LOG_DEBUG ? level_lower[level] : NULL;
}

const char *th_log_format_name(int format)
{
    return format >= 0 && format <= TH_LOG_JSON ? format_names[format] : NULL;
}

static int open_log(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    return fd < 0 ? -errno : fd;
}

int th_log_init(int level, int format, const char *path)
{
    th_log_level_now = level;
    log_format = format;
    if (!path || !*path) {
        log_path[0] = '\0';
        return 0;
    }
    int fd = open_log(path);
    if (fd < 0)
        return fd;
    snprintf(log_path, sizeof(log_path), "%s", path);
    log_fd = fd;
    return 0;
}

void th_log_set_role(const char *role)
{
    snprintf(log_role, sizeof(log_role), "%s", role);
}

int th_log_reopen(void)
{
    if (!log_path[0])
        return 0;
    int fd = open_log(log_path);
    if (fd < 0)
        return fd;
    /* dup2 keeps the descriptor number stable for anyone holding it. */
    dup2(fd, log_fd);
    close(fd);
    return 0;
}

/* Append s to out as a JSON string body (no quotes), escaping as needed. */
static size_t json_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    return o;
}

void th_log_write(int level, const char *fmt, ...)
{
    char msg[2048], line[4608], ts[40];
    int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (level < TH_LOG_ERROR || level > TH_LOG_DEBUG)
        level = TH_LOG_INFO;
    th_fmt_rfc3339_ms(ts, sizeof(ts), th_now_ns());

    int n;
    if (log_format == TH_LOG_JSON) {
        char esc[4200];
        json_escape(esc, sizeof(esc), msg);
        n = snprintf(line, sizeof(line),
                     "{\"ts\":\"%s\",\"level\":\"%s\",\"role\":\"%s\",\"pid\":%d,\"msg\":\"%s\"}\n",
                     ts, level_lower[level], log_role, (int)getpid(), esc);
    } else {
        n = snprintf(line, sizeof(line), "%s %-5s %s: %s\n", ts, level_names[level], log_role, msg);
    }
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line)) {
        n = sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    ssize_t w = write(log_fd, line, (size_t)n);
    (void)w; /* nowhere left to report a failed log write */
    errno = saved;
}
