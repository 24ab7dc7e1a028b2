/* Bootstrap: workers find each other from launcher environments and rendezvous over TCP at rank 0. */
#ifndef RDAG_BOOTSTRAP_BOOT_H
#define RDAG_BOOTSTRAP_BOOT_H

/*
 * How it is used (docs/bootstrap.md has the design, docs/env.md the variables):
 *
 *	struct boot_opts o;
 *	struct boot *b;
 *	struct boot_gather g;
 *	boot_opts_init(&o);                 // everything "unset"
 *	snprintf(o.name, sizeof(o.name), "trainer%d", 3);   // explicit values win over the env
 *	rc = boot_open(&o, &b);             // reads the environment for what is unset, rendezvous
 *	rc = boot_allgather(b, my_addr, my_addr_len, &g);   // g.blobs[r], g.lens[r] for every rank
 *	rc = boot_barrier(b);
 *	boot_close(b);
 *
 * Rank 0 listens on the master port; every other rank connects to it (retrying until the
 * timeout, since rank 0 may start later), presents the job token and its rank, world size, name
 * and host, and gets back everyone's name and host once all ranks have joined. The star of
 * connections to rank 0 stays open until boot_close(): later collectives travel over it, and a
 * rank that dies shows up as EOF (boot_check(), or the next collective's error names it).
 *
 * Every call returns 0 or a negative RDAG_E* code with a detailed message (rdag_last_error()).
 * No call blocks past its deadline (the bootstrap timeout); sockets never raise SIGPIPE.
 */

#include <stddef.h>
#include <stdint.h>

#define BOOT_NAME_MAX 64         /* worker name, with its NUL: 1..63 of [A-Za-z0-9_.:-] */
#define BOOT_HOST_MAX 256        /* host name, with its NUL */
#define BOOT_TOKEN_MAX 256       /* job token, with its NUL */
#define BOOT_ADDR_MAX 256        /* master address (host name or IP literal), with its NUL */
#define BOOT_WORLD_MAX 65536     /* worker ids are 16 bits */
#define BOOT_BLOB_MAX 65536u /* 64 KiB: largest blob one rank contributes to an allgather */
#define BOOT_DEFAULT_TIMEOUT_MS 120000

/*
 * Options. boot_opts_init() marks every field unset; a field the caller sets is used as is (it
 * overrides every environment variable); boot_opts_from_env() fills the unset ones. The *_src
 * fields say where each value came from ("caller", a variable name, "default", ...), for messages.
 */
struct boot_opts {
	int rank;                     /* -1: unset */
	int world_size;               /* -1: unset */
	int local_rank;               /* launcher's hint (LOCAL_RANK, ...), -1: unknown */
	int local_size;               /* launcher's hint (LOCAL_WORLD_SIZE, ...), -1: unknown */
	char master_addr[BOOT_ADDR_MAX]; /* rank 0's host name or address; "": unset */
	int master_port;              /* -1: unset; 0 only with listen_fd (rank 0) */
	char name[BOOT_NAME_MAX];     /* this worker's name; "": unset ("worker<rank>") */
	char host[BOOT_HOST_MAX];     /* this worker's host name; "": unset (gethostname) */
	char job_token[BOOT_TOKEN_MAX]; /* shared by every rank of the job */
	int job_token_set;            /* 0: job_token unset (even "" is a valid token once set) */
	int timeout_ms;               /* <= 0: unset */
	/*
	 * Rank 0 only: an already bound socket (listening or not) to serve the rendezvous on
	 * instead of binding master_port itself (e.g. bound to port 0 by a parent process).
	 * boot_open() takes ownership and closes it whatever happens. -1: unset.
	 */
	int listen_fd;
	/*
	 * Non-root ranks: called after each failed attempt to reach rank 0 (attempt counts from 1,
	 * code is the RDAG_E* reason), from the thread inside boot_open(). NULL: none.
	 */
	void (*retry_hook)(void *arg, unsigned attempt, int code);
	void *retry_arg;

	/* Filled by boot_opts_from_env(): which launcher was seen, where each value came from. */
	const char *launcher;         /* "torchrun", "openmpi", "slurm" or "none" */
	const char *rank_src, *world_src, *master_addr_src, *master_port_src, *token_src;
};

/* Marks every field of o unset. Thread-safe (touches only o). */
void boot_opts_init(struct boot_opts *o);

/*
 * Fills o's unset fields from the environment (precedence: caller > RDAG_* > torchrun >
 * Open MPI > Slurm; docs/bootstrap.md has the full rules) and validates the result. Fails with a
 * message saying what to set when the rank, world size or (world > 1) master address cannot be
 * told. Reads the process environment: not safe against a concurrent setenv().
 */
int boot_opts_from_env(struct boot_opts *o);

/*
 * The first host of a Slurm node list ("node[01-04,07],gpu3" -> "node01"; also suffixes
 * "n[1-2]-ib" and several bracket groups "r[1-2]n[3-4]"). Thread-safe.
 */
int boot_slurm_first_host(const char *nodelist, char *out, size_t outlen);

struct boot;

/*
 * Rendezvous: resolves o (a copy of it, with boot_opts_from_env() for what is unset), then
 * rank 0 waits until every other rank has joined, and every rank learns everyone's name and
 * host. Fails if a rank does not join in time (the message names the missing ranks), if rank 0
 * cannot be reached in time, or if rank 0 refuses this rank (wrong job token: RDAG_EACCES;
 * duplicate rank or name: RDAG_EEXIST; world size mismatch or malformed data: RDAG_EINVAL; rank
 * out of range: RDAG_ERANGE). Rank 0 logs refused connections and keeps waiting for the right
 * ones. Thread-safe for different handles (each call creates its own).
 */
int boot_open(const struct boot_opts *o, struct boot **out);

/*
 * Result of a collective: blobs[r] (lens[r] bytes) is what rank r contributed. Owned by the
 * handle; valid until the next collective on it or boot_close().
 */
struct boot_gather {
	uint32_t n;
	const void *const *blobs;
	const size_t *lens;
};

/*
 * Every rank contributes len bytes (0..BOOT_BLOB_MAX, may differ per rank) and gets everyone's.
 * Collective: every rank must call it, in the same order relative to boot_barrier(). Callable
 * any number of times. After any collective fails the handle is broken and every later call
 * returns the same error. Not thread-safe on one handle (one caller at a time).
 */
int boot_allgather(struct boot *b, const void *mine, size_t len, struct boot_gather *out);

/*
 * As boot_allgather(), for blobs of the same size on every rank, copied into out
 * (world * len bytes, rank r at out + r * len). A rank with another size is an error on all
 * ranks. Not thread-safe on one handle.
 */
int boot_allgather_fixed(struct boot *b, const void *mine, size_t len, void *out);

/* Returns once every rank has entered it (or fails, naming the ranks that did not). Not thread-safe on one handle. */
int boot_barrier(struct boot *b);

/*
 * Non-blocking health check of the star connections: 0 if they look alive, RDAG_EPEER_DEAD
 * naming the rank whose connection closed (rank 0's, on other ranks), or the error rank 0
 * reported. Consumes nothing a later collective needs. Not thread-safe on one handle.
 */
int boot_check(struct boot *b);

/* Closes the connections and frees b (NULL is fine). Does not synchronise: call boot_barrier() first if needed. */
void boot_close(struct boot *b);

/* Facts learnt at boot_open(); valid until boot_close(). Thread-safe (immutable after open). */
uint32_t boot_rank(const struct boot *b);
uint32_t boot_world(const struct boot *b);
const char *boot_name(const struct boot *b, uint32_t rank); /* NULL if rank is out of range */
const char *boot_host(const struct boot *b, uint32_t rank); /* NULL if rank is out of range */
/* Ranks whose host name equals this rank's: how many, and this rank's index among them. */
uint32_t boot_local_rank(const struct boot *b);
uint32_t boot_local_size(const struct boot *b);
/* 1 if every rank reported the same host name. */
int boot_all_local(const struct boot *b);
/* The job token in force (as resolved from the options). */
const char *boot_job_token(const struct boot *b);

#endif /* RDAG_BOOTSTRAP_BOOT_H */
