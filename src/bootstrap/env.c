/* Bootstrap options from launcher environments: torchrun, Open MPI, Slurm and RDAG_* variables. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bootstrap/boot.h"
#include "bootstrap/boot_int.h"
#include "util/err.h"
#include "util/log.h"

/*
 * The launchers we recognise, in precedence order: the first whose rank variable is set is
 * "the launcher" (torchrun inside a Slurm allocation, or mpirun inside one, must win over the
 * SLURM_PROCID=0 their parent shell inherited).
 */
struct launcher {
	const char *name;
	const char *rank, *size, *size_alt, *local_rank, *local_size;
};

static const struct launcher launchers[] = {
	{"torchrun", "RANK", "WORLD_SIZE", NULL, "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
	{"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", NULL, "OMPI_COMM_WORLD_LOCAL_RANK",
	 "OMPI_COMM_WORLD_LOCAL_SIZE"},
	{"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_LOCALID", NULL},
};

#define PORT_BASE 20000u
#define PORT_SPAN 10000u

/* A variable's value, or NULL if it is unset or empty. */
static const char *env(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? v : NULL;
}

/* Parses a decimal integer in [lo, hi] from variable `name`; an error says which variable. */
static int parse_int(const char *name, const char *val, long lo, long hi, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(val, &end, 10);
	if (errno || end == val || *end != '\0' || v < lo || v > hi)
		return err_set(RDAG_EINVAL, "%s='%s' is not an integer in [%ld, %ld]", name, val, lo, hi);
	*out = (int)v;
	return 0;
}

void boot_opts_init(struct boot_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->rank = -1;
	o->world_size = -1;
	o->local_rank = -1;
	o->local_size = -1;
	o->master_port = -1;
	o->listen_fd = -1;
	o->launcher = "none";
}

int boot_slurm_first_host(const char *list, char *out, size_t outlen)
{
	size_t n = 0;
	const char *p = list;

	if (!list || !out || outlen == 0)
		return err_set(RDAG_EINVAL, "boot_slurm_first_host: NULL argument");
	/* Only the first top-level element matters: commas inside brackets are not separators. */
	while (*p && *p != ',') {
		if (*p == '[') {
			const char *q = ++p;

			/* The group's first value: the digits before the first '-', ',' or ']'. */
			while (*q >= '0' && *q <= '9')
				q++;
			if (q == p || (*q != '-' && *q != ',' && *q != ']'))
				return err_set(RDAG_EINVAL, "Slurm node list '%s': bad range at offset %zu "
					       "(expected digits after '[')", list, (size_t)(p - list));
			if (n + (size_t)(q - p) >= outlen)
				goto too_long;
			memcpy(out + n, p, (size_t)(q - p));
			n += (size_t)(q - p);
			while (*q && *q != ']') {
				if (*q == '[')
					return err_set(RDAG_EINVAL, "Slurm node list '%s': nested '['", list);
				q++;
			}
			if (*q != ']')
				return err_set(RDAG_EINVAL, "Slurm node list '%s': '[' without ']'", list);
			p = q + 1;
			continue;
		}
		if (*p == ']')
			return err_set(RDAG_EINVAL, "Slurm node list '%s': ']' without '['", list);
		if (n + 1 >= outlen)
			goto too_long;
		out[n++] = *p++;
	}
	if (n == 0)
		return err_set(RDAG_EINVAL, "Slurm node list '%s': no host name in it", list);
	out[n] = '\0';
	return 0;
too_long:
	return err_set(RDAG_EINVAL, "Slurm node list '%s': first host name longer than %zu bytes", list,
		       outlen - 1);
}

uint32_t boot_fnv1a(const void *data, size_t len)
{
	const unsigned char *p = data;
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 16777619u;
	}
	return h;
}

int boot_name_valid(const char *name)
{
	size_t n = strnlen(name, BOOT_NAME_MAX);

	if (n == 0 || n >= BOOT_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == ':' || c == '-'))
			return 0;
	}
	return 1;
}

int boot_host_valid(const char *host)
{
	size_t n = strnlen(host, BOOT_HOST_MAX);

	if (n == 0 || n >= BOOT_HOST_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)host[i] <= ' ' || (unsigned char)host[i] >= 0x7f)
			return 0;
	}
	return 1;
}

/* RDAG_WORKER_NAME with "%r" replaced by the rank and "%%" by '%'. */
static int expand_name(const char *pattern, int rank, char *out, size_t outlen)
{
	size_t n = 0;

	for (const char *p = pattern; *p; p++) {
		char num[16];
		const char *piece = p;
		size_t len = 1;

		if (p[0] == '%' && p[1] == 'r') {
			snprintf(num, sizeof(num), "%d", rank);
			piece = num;
			len = strlen(num);
			p++;
		} else if (p[0] == '%' && p[1] == '%') {
			p++;
		}
		if (n + len >= outlen)
			return err_set(RDAG_EINVAL, "RDAG_WORKER_NAME='%s' is longer than %zu characters",
				       pattern, outlen - 1);
		memcpy(out + n, piece, len);
		n += len;
	}
	out[n] = '\0';
	return 0;
}

/* Copies src into dst (room bytes) or fails naming the variable. */
static int copy_str(char *dst, size_t room, const char *src, const char *what)
{
	size_t n = strlen(src);

	if (n >= room)
		return err_set(RDAG_EINVAL, "%s is longer than %zu characters", what, room - 1);
	memcpy(dst, src, n + 1);
	return 0;
}

/* The job token: RDAG_JOB_TOKEN, else the launchers' job ids (see docs/bootstrap.md). */
static int resolve_token(struct boot_opts *o)
{
	const char *v;
	int n;

	if (o->job_token_set) {
		o->token_src = "caller";
		goto check;
	}
	o->job_token_set = 1;
	if ((v = env("RDAG_JOB_TOKEN"))) {
		o->token_src = "RDAG_JOB_TOKEN";
		n = snprintf(o->job_token, sizeof(o->job_token), "%s", v);
	} else if ((v = env("TORCHELASTIC_RUN_ID"))) {
		o->token_src = "TORCHELASTIC_RUN_ID";
		n = snprintf(o->job_token, sizeof(o->job_token), "torchrun:%s", v);
	} else if ((v = env("OMPI_MCA_ess_base_jobid"))) {
		o->token_src = "OMPI_MCA_ess_base_jobid";
		n = snprintf(o->job_token, sizeof(o->job_token), "openmpi:%s", v);
	} else if ((v = env("PMIX_NAMESPACE"))) {
		o->token_src = "PMIX_NAMESPACE";
		n = snprintf(o->job_token, sizeof(o->job_token), "pmix:%s", v);
	} else if ((v = env("SLURM_JOB_ID"))) {
		const char *step = env("SLURM_STEP_ID");

		o->token_src = step ? "SLURM_JOB_ID+SLURM_STEP_ID" : "SLURM_JOB_ID";
		n = step ? snprintf(o->job_token, sizeof(o->job_token), "slurm:%s.%s", v, step)
			 : snprintf(o->job_token, sizeof(o->job_token), "slurm:%s", v);
	} else {
		o->token_src = "none (empty token)";
		o->job_token[0] = '\0';
		n = 0;
	}
	if (n < 0 || (size_t)n >= sizeof(o->job_token))
		return err_set(RDAG_EINVAL, "job token from %s is longer than %zu characters", o->token_src,
			       sizeof(o->job_token) - 1);
check:
	if (strnlen(o->job_token, sizeof(o->job_token)) >= sizeof(o->job_token))
		return err_set(RDAG_EINVAL, "job token is not NUL-terminated within %zu bytes",
			       sizeof(o->job_token));
	return 0;
}

/* Rank 0's address when no variable names it: the launcher's own knowledge, or an error. */
static int master_fallback(struct boot_opts *o, const struct launcher *l)
{
	if (l && strcmp(l->name, "openmpi") == 0) {
		if (o->local_size > 0 && o->local_size == o->world_size) {
			o->master_addr_src = "localhost (every Open MPI rank is on this host)";
			return copy_str(o->master_addr, sizeof(o->master_addr), "localhost", "localhost");
		}
		return err_set(RDAG_EINVAL,
			       "cannot tell rank 0's address: Open MPI gives none and its %d ranks are not "
			       "all on this host (OMPI_COMM_WORLD_LOCAL_SIZE=%s); set RDAG_MASTER_ADDR (or "
			       "MASTER_ADDR) to the host name or IP address of rank 0's node, e.g. "
			       "mpirun -x RDAG_MASTER_ADDR=<host> ...",
			       o->world_size, env("OMPI_COMM_WORLD_LOCAL_SIZE") ? env("OMPI_COMM_WORLD_LOCAL_SIZE")
									: "unset");
	}
	if (l && strcmp(l->name, "slurm") == 0) {
		static const char *const lists[] = {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST",
						    "SLURM_NODELIST"};

		for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
			const char *v = env(lists[i]);
			int rc;

			if (!v)
				continue;
			rc = boot_slurm_first_host(v, o->master_addr, sizeof(o->master_addr));
			if (rc) {
				char why[256];

				snprintf(why, sizeof(why), "%s", rdag_last_error());
				return err_set(rc, "cannot tell rank 0's address from %s: %s; set "
					       "RDAG_MASTER_ADDR (or MASTER_ADDR)", lists[i], why);
			}
			o->master_addr_src = lists[i];
			return 0;
		}
		return err_set(RDAG_EINVAL, "cannot tell rank 0's address: none of SLURM_STEP_NODELIST, "
			       "SLURM_JOB_NODELIST, SLURM_NODELIST is set; set RDAG_MASTER_ADDR (or "
			       "MASTER_ADDR) to the host name of rank 0's node");
	}
	return err_set(RDAG_EINVAL, "cannot tell rank 0's address for a world of %d ranks (launcher: %s): "
		       "set RDAG_MASTER_ADDR (or MASTER_ADDR) to the host name or IP address of rank 0",
		       o->world_size, l ? l->name : "none");
}

/* Strips the brackets of "[v6-literal]", as users write it in URLs. */
static void strip_brackets(char *addr)
{
	size_t n = strlen(addr);

	if (n >= 2 && addr[0] == '[' && addr[n - 1] == ']') {
		memmove(addr, addr + 1, n - 2);
		addr[n - 2] = '\0';
	}
}

static int resolve_port(struct boot_opts *o)
{
	const char *v;
	int rc, port;

	if (o->master_port >= 0) {
		o->master_port_src = "caller";
		return 0;
	}
	if ((v = env("RDAG_MASTER_PORT"))) {
		rc = parse_int("RDAG_MASTER_PORT", v, 1, 65535, &o->master_port);
		o->master_port_src = "RDAG_MASTER_PORT";
		return rc;
	}
	if ((v = env("MASTER_PORT"))) {
		/*
		 * MASTER_PORT belongs to torch.distributed: torchrun's agent (or the program's own
		 * env:// process group) serves its TCP store there on rank 0's node. We take the
		 * next port so both can run.
		 */
		rc = parse_int("MASTER_PORT", v, 1, 65534, &port);
		if (rc) {
			char why[256];

			snprintf(why, sizeof(why), "%s", rdag_last_error());
			return err_set(rc, "%s (rdag listens on MASTER_PORT + 1)", why);
		}
		o->master_port = port + 1;
		o->master_port_src = "MASTER_PORT + 1";
		return 0;
	}
	o->master_port = (int)(PORT_BASE + boot_fnv1a(o->job_token, strlen(o->job_token)) % PORT_SPAN);
	o->master_port_src = "the job token's hash";
	return 0;
}

static void resolve_timeout(struct boot_opts *o)
{
	const char *v = env("RDAG_BOOT_TIMEOUT");
	char *end;
	double s;

	if (o->timeout_ms > 0)
		return;
	o->timeout_ms = BOOT_DEFAULT_TIMEOUT_MS;
	if (!v)
		return;
	errno = 0;
	s = strtod(v, &end);
	if (errno || end == v || *end != '\0' || !(s > 0.0) || s > 86400.0 * 7) {
		LOG_WARN("RDAG_BOOT_TIMEOUT='%s' is not a number of seconds in (0, 604800]; using %d s", v,
			 BOOT_DEFAULT_TIMEOUT_MS / 1000);
		return;
	}
	o->timeout_ms = s * 1000.0 < 1.0 ? 1 : (int)(s * 1000.0);
}

int boot_opts_from_env(struct boot_opts *o)
{
	const struct launcher *l = NULL;
	const char *v;
	int rc;

	if (!o)
		return err_set(RDAG_EINVAL, "boot_opts_from_env: NULL options");
	for (size_t i = 0; i < sizeof(launchers) / sizeof(launchers[0]); i++) {
		if (env(launchers[i].rank)) {
			l = &launchers[i];
			break;
		}
	}
	o->launcher = l ? l->name : "none";

	/* Rank and world size: caller > RDAG_* > the launcher's. */
	if (o->rank >= 0) {
		o->rank_src = "caller";
	} else if ((v = env("RDAG_RANK"))) {
		o->rank_src = "RDAG_RANK";
		if ((rc = parse_int("RDAG_RANK", v, 0, BOOT_WORLD_MAX - 1, &o->rank)))
			return rc;
	} else if (l) {
		o->rank_src = l->rank;
		if ((rc = parse_int(l->rank, env(l->rank), 0, BOOT_WORLD_MAX - 1, &o->rank)))
			return rc;
	}
	if (o->world_size > 0) {
		o->world_src = "caller";
	} else if ((v = env("RDAG_WORLD_SIZE"))) {
		o->world_src = "RDAG_WORLD_SIZE";
		if ((rc = parse_int("RDAG_WORLD_SIZE", v, 1, BOOT_WORLD_MAX, &o->world_size)))
			return rc;
	} else if (l) {
		const char *name = env(l->size) ? l->size : l->size_alt;

		if (!name || !env(name))
			return err_set(RDAG_EINVAL, "%s is set (launcher %s) but %s is not: cannot tell the "
				       "world size; set RDAG_WORLD_SIZE", l->rank, l->name, l->size);
		o->world_src = name;
		if ((rc = parse_int(name, env(name), 1, BOOT_WORLD_MAX, &o->world_size)))
			return rc;
	}
	if (o->rank < 0 || o->world_size <= 0)
		return err_set(RDAG_EINVAL, "cannot tell this worker's %s: launch with torchrun, mpirun or "
			       "srun, or set RDAG_RANK and RDAG_WORLD_SIZE (or pass them explicitly)",
			       o->rank < 0 && o->world_size <= 0 ? "rank and world size"
			       : o->rank < 0 ? "rank" : "world size");
	if (o->world_size > BOOT_WORLD_MAX)
		return err_set(RDAG_EINVAL, "world size %d (from %s) is above %d", o->world_size,
			       o->world_src, BOOT_WORLD_MAX);
	if (o->rank >= o->world_size)
		return err_set(RDAG_ERANGE, "rank %d (from %s) is out of range for a world of %d (from %s)",
			       o->rank, o->rank_src, o->world_size, o->world_src);

	/* The launcher's local hints, only when it is also where the rank came from. */
	if (l && o->rank_src == l->rank) {
		if (o->local_rank < 0 && l->local_rank && (v = env(l->local_rank)) &&
		    (rc = parse_int(l->local_rank, v, 0, BOOT_WORLD_MAX - 1, &o->local_rank)))
			return rc;
		if (o->local_size < 0 && l->local_size && (v = env(l->local_size)) &&
		    (rc = parse_int(l->local_size, v, 1, BOOT_WORLD_MAX, &o->local_size)))
			return rc;
	}

	if ((rc = resolve_token(o)))
		return rc;

	/* Rank 0's address: caller > RDAG_MASTER_ADDR > MASTER_ADDR > the launcher's knowledge. */
	if (o->master_addr[0]) {
		o->master_addr_src = "caller";
		if (strnlen(o->master_addr, sizeof(o->master_addr)) >= sizeof(o->master_addr))
			return err_set(RDAG_EINVAL, "master address is not NUL-terminated");
	} else if ((v = env("RDAG_MASTER_ADDR"))) {
		o->master_addr_src = "RDAG_MASTER_ADDR";
		if ((rc = copy_str(o->master_addr, sizeof(o->master_addr), v, "RDAG_MASTER_ADDR")))
			return rc;
	} else if ((v = env("MASTER_ADDR"))) {
		o->master_addr_src = "MASTER_ADDR";
		if ((rc = copy_str(o->master_addr, sizeof(o->master_addr), v, "MASTER_ADDR")))
			return rc;
	} else if (o->world_size > 1) {
		if ((rc = master_fallback(o, l)))
			return rc;
	}
	strip_brackets(o->master_addr);

	if ((rc = resolve_port(o)))
		return rc;
	if (o->master_port > 65535 || (o->master_port == 0 && (o->rank != 0 || o->listen_fd < 0) &&
				       o->world_size > 1))
		return err_set(RDAG_EINVAL, "master port %d (from %s) is not in [1, 65535]%s", o->master_port,
			       o->master_port_src,
			       o->master_port == 0 ? " (port 0 only works for rank 0 with listen_fd)" : "");

	/* This worker's name and host. */
	if (o->name[0]) {
		if (!boot_name_valid(o->name))
			return err_set(RDAG_EINVAL, "worker name '%.*s' (from the caller) is not 1..%d "
				       "characters of [A-Za-z0-9_.:-]", BOOT_NAME_MAX, o->name, BOOT_NAME_MAX - 1);
	} else if ((v = env("RDAG_WORKER_NAME"))) {
		if ((rc = expand_name(v, o->rank, o->name, sizeof(o->name))))
			return rc;
		if (!boot_name_valid(o->name))
			return err_set(RDAG_EINVAL, "RDAG_WORKER_NAME='%s' gives '%s', which is not 1..%d "
				       "characters of [A-Za-z0-9_.:-]", v, o->name, BOOT_NAME_MAX - 1);
	} else {
		snprintf(o->name, sizeof(o->name), "worker%d", o->rank);
	}
	if (o->host[0]) {
		if (!boot_host_valid(o->host))
			return err_set(RDAG_EINVAL, "host name '%.*s' (from the caller) is empty, too long "
				       "or has spaces or control characters", BOOT_HOST_MAX, o->host);
	} else {
		if (gethostname(o->host, sizeof(o->host)) != 0)
			return err_set(RDAG_EIO, "gethostname failed: %s", strerror(errno));
		o->host[sizeof(o->host) - 1] = '\0';
		if (!boot_host_valid(o->host))
			return err_set(RDAG_EINVAL, "this host's name '%s' is empty or has spaces or control "
				       "characters", o->host);
	}
	resolve_timeout(o);
	return 0;
}
