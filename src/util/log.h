/* Internal logging: levels from RDAG_LOG, output to stderr or RDAG_LOG_FILE, host/pid/rank prefix. */
#ifndef RDAG_UTIL_LOG_H
#define RDAG_UTIL_LOG_H

enum log_level {
	RDAG_LOG_NONE = 0,
	RDAG_LOG_ERROR,
	RDAG_LOG_WARN,
	RDAG_LOG_INFO,
	RDAG_LOG_DEBUG,
	RDAG_LOG_TRACE,
};

/* The level in force (read once from RDAG_LOG, default warn). Thread-safe. */
enum log_level log_level(void);

/* Sets the rank printed in the prefix (-1 until the agent knows it). Thread-safe. */
void log_set_rank(int rank);

/* Writes one line "host:pid:rank rdag LEVEL message" if level is enabled. Thread-safe. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_ERROR(...) log_msg(RDAG_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) log_msg(RDAG_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) log_msg(RDAG_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...)                                                                     \
	do {                                                                               \
		if (log_level() >= RDAG_LOG_DEBUG)                                         \
			log_msg(RDAG_LOG_DEBUG, __VA_ARGS__);                              \
	} while (0)
#define LOG_TRACE(...)                                                                     \
	do {                                                                               \
		if (log_level() >= RDAG_LOG_TRACE)                                         \
			log_msg(RDAG_LOG_TRACE, __VA_ARGS__);                              \
	} while (0)

#endif /* RDAG_UTIL_LOG_H */
