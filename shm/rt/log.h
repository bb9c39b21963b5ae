/*
 * Logging shared by every tether role.
 *
 * One line per event, written with a single write(2) so lines from the
 * supervisor, workers, janitor and notifier never interleave even when they
 * share a file opened with O_APPEND. Text lines start with a UTC timestamp,
 * the level and the role ("worker[2]", "notifier", ...); the contract's
 * operator-facing messages ("[WebSocket] User ... connected ...") follow
 * verbatim. The macro checks the level before its arguments are evaluated,
 * so debug lines on hot paths cost one compare when disabled.
 */
#ifndef TETHER_SHM_RT_LOG_H
#define TETHER_SHM_RT_LOG_H

enum th_log_level { TH_LOG_ERROR = 0, TH_LOG_WARN, TH_LOG_INFO, TH_LOG_DEBUG };
enum th_log_format { TH_LOG_TEXT = 0, TH_LOG_JSON };

extern int th_log_level_now;

/* "error", "warn", "info", "debug" (the --log-level names); NULL past the last. */
const char *th_log_level_name(int level);
/* "text", "json" (the --log-format names); NULL past the last. */
const char *th_log_format_name(int format);

/* Configure the process-wide logger. path NULL means stderr. Returns 0 or -errno. */
int th_log_init(int level, int format, const char *path);
/* Name this process in every line ("supervisor", "worker[0]", ...). */
void th_log_set_role(const char *role);
/* Reopen the log file (SIGHUP, after logrotate). No-op when logging to stderr. */
int th_log_reopen(void);

void th_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define th_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= th_log_level_now)                                                           \
            th_log_write((level), __VA_ARGS__);                                                    \
    } while (0)
#define th_error(...) th_log(TH_LOG_ERROR, __VA_ARGS__)
#define th_warn(...) th_log(TH_LOG_WARN, __VA_ARGS__)
#define th_info(...) th_log(TH_LOG_INFO, __VA_ARGS__)
#define th_debug(...) th_log(TH_LOG_DEBUG, __VA_ARGS__)

#endif
