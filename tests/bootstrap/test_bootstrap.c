/* Unit tests of the bootstrap: launcher environments, precedence, Slurm node lists, frame codec. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <rdag/error.h>

#include "bootstrap/boot.h"
#include "bootstrap/boot_int.h"

/* Every variable the bootstrap reads; each test starts with none of them set. */
static const char *const all_vars[] = {
	"RDAG_RANK", "RDAG_WORLD_SIZE", "RDAG_MASTER_ADDR", "RDAG_MASTER_PORT", "RDAG_JOB_TOKEN",
	"RDAG_WORKER_NAME", "RDAG_BOOT_TIMEOUT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
	"MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_RANK",
	"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
	"OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS",
	"SLURM_LOCALID", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID",
	"SLURM_STEP_ID",
};

static int clear_env(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(all_vars) / sizeof(all_vars[0]); i++)
		unsetenv(all_vars[i]);
	return 0;
}

static void set(const char *name, const char *value)
{
	assert_int_equal(setenv(name, value, 1), 0);
}

/* Resolves from a fresh options struct; returns the code. */
static int resolve(struct boot_opts *o)
{
	boot_opts_init(o);
	return boot_opts_from_env(o);
}

static void assert_error_mentions(int rc, int code, const char *needle)
{
	assert_int_equal(rc, code);
	if (!strstr(rdag_last_error(), needle))
		fail_msg("error '%s' does not mention '%s'", rdag_last_error(), needle);
}

/* ---- launchers ------------------------------------------------------------------------- */

static void nothing_set_is_a_clear_error(void **state)
{
	struct boot_opts o;
	(void)state;

	assert_error_mentions(resolve(&o), RDAG_EINVAL, "RDAG_RANK");
	assert_non_null(strstr(rdag_last_error(), "torchrun"));
}

static void torchrun_environment(void **state)
{
	struct boot_opts o;
	(void)state;

	set("RANK", "2");
	set("WORLD_SIZE", "4");
	set("LOCAL_RANK", "0");
	set("LOCAL_WORLD_SIZE", "2");
	set("MASTER_ADDR", "node7");
	set("MASTER_PORT", "29500");
	set("TORCHELASTIC_RUN_ID", "abc");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.launcher, "torchrun");
	assert_int_equal(o.rank, 2);
	assert_int_equal(o.world_size, 4);
	assert_int_equal(o.local_rank, 0);
	assert_int_equal(o.local_size, 2);
	assert_string_equal(o.master_addr, "node7");
	/* torch.distributed's store holds MASTER_PORT on rank 0's node: we take the next one. */
	assert_int_equal(o.master_port, 29501);
	assert_string_equal(o.job_token, "torchrun:abc");
	assert_string_equal(o.name, "worker2");
	assert_int_equal(o.timeout_ms, BOOT_DEFAULT_TIMEOUT_MS);
	assert_true(o.host[0] != '\0');
}

static void torchrun_without_master_addr_fails(void **state)
{
	struct boot_opts o;
	(void)state;

	set("RANK", "1");
	set("WORLD_SIZE", "2");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "MASTER_ADDR");
	/* A world of one needs nobody. */
	set("RANK", "0");
	set("WORLD_SIZE", "1");
	assert_int_equal(resolve(&o), 0);
}

static void rank_without_world_size_fails(void **state)
{
	struct boot_opts o;
	(void)state;

	set("OMPI_COMM_WORLD_RANK", "1");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "OMPI_COMM_WORLD_SIZE");
}

static void bad_numbers_name_their_variable(void **state)
{
	struct boot_opts o;
	(void)state;

	set("RANK", "two");
	set("WORLD_SIZE", "4");
	set("MASTER_ADDR", "h");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "RANK='two'");
	set("RANK", "4");
	assert_error_mentions(resolve(&o), RDAG_ERANGE, "out of range");
	set("RANK", "1");
	set("WORLD_SIZE", "70000");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "WORLD_SIZE='70000'");
	set("WORLD_SIZE", "4");
	set("MASTER_PORT", "65535");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "MASTER_PORT");
	unsetenv("MASTER_PORT");
	set("RDAG_MASTER_PORT", "65535"); /* taken as is */
	assert_int_equal(resolve(&o), 0);
	assert_int_equal(o.master_port, 65535);
	set("RDAG_MASTER_PORT", "0");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "RDAG_MASTER_PORT");
}

static void openmpi_on_one_host_uses_localhost(void **state)
{
	struct boot_opts o;
	(void)state;

	set("OMPI_COMM_WORLD_RANK", "1");
	set("OMPI_COMM_WORLD_SIZE", "4");
	set("OMPI_COMM_WORLD_LOCAL_RANK", "1");
	set("OMPI_COMM_WORLD_LOCAL_SIZE", "4");
	set("OMPI_MCA_ess_base_jobid", "1290207233");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.launcher, "openmpi");
	assert_int_equal(o.rank, 1);
	assert_int_equal(o.world_size, 4);
	assert_int_equal(o.local_rank, 1);
	assert_int_equal(o.local_size, 4);
	assert_string_equal(o.master_addr, "localhost");
	assert_string_equal(o.job_token, "openmpi:1290207233");
	assert_string_equal(o.token_src, "OMPI_MCA_ess_base_jobid");
}

static void openmpi_on_many_hosts_needs_master_addr(void **state)
{
	struct boot_opts o;
	(void)state;

	set("OMPI_COMM_WORLD_RANK", "1");
	set("OMPI_COMM_WORLD_SIZE", "4");
	set("OMPI_COMM_WORLD_LOCAL_SIZE", "2");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "RDAG_MASTER_ADDR");
	assert_non_null(strstr(rdag_last_error(), "Open MPI"));
	set("MASTER_ADDR", "head");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.master_addr, "head");
	set("RDAG_MASTER_ADDR", "[fd00::2]"); /* RDAG_* wins; URL-style brackets are dropped */
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.master_addr, "fd00::2");
	assert_string_equal(o.master_addr_src, "RDAG_MASTER_ADDR");
}

static void slurm_environment(void **state)
{
	struct boot_opts o;
	(void)state;

	set("SLURM_PROCID", "3");
	set("SLURM_NTASKS", "8");
	set("SLURM_LOCALID", "1");
	set("SLURM_JOB_NODELIST", "node[01-04,07]");
	set("SLURM_JOB_ID", "55");
	set("SLURM_STEP_ID", "2");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.launcher, "slurm");
	assert_int_equal(o.rank, 3);
	assert_int_equal(o.world_size, 8);
	assert_int_equal(o.local_rank, 1);
	assert_int_equal(o.local_size, -1);
	assert_string_equal(o.master_addr, "node01");
	assert_string_equal(o.master_addr_src, "SLURM_JOB_NODELIST");
	assert_string_equal(o.job_token, "slurm:55.2");

	/* The step's node list is where task 0 runs: it comes first; SLURM_NODELIST last. */
	set("SLURM_STEP_NODELIST", "gpu[3-4]");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.master_addr, "gpu3");
	unsetenv("SLURM_STEP_NODELIST");
	unsetenv("SLURM_JOB_NODELIST");
	set("SLURM_NODELIST", "cn-9,cn-10");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.master_addr, "cn-9");
	/* MASTER_ADDR beats the node list, RDAG_MASTER_ADDR beats MASTER_ADDR. */
	set("MASTER_ADDR", "m1");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.master_addr, "m1");
	set("RDAG_MASTER_ADDR", "m2");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.master_addr, "m2");
	unsetenv("MASTER_ADDR");
	unsetenv("RDAG_MASTER_ADDR");

	/* Older Slurm: SLURM_NPROCS; a batch shell without a step: job id alone. */
	unsetenv("SLURM_NTASKS");
	set("SLURM_NPROCS", "6");
	unsetenv("SLURM_STEP_ID");
	assert_int_equal(resolve(&o), 0);
	assert_int_equal(o.world_size, 6);
	assert_string_equal(o.job_token, "slurm:55");

	unsetenv("SLURM_NODELIST");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "SLURM_JOB_NODELIST");
	set("SLURM_NODELIST", "node[01-");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "node[01-");
	assert_non_null(strstr(rdag_last_error(), "RDAG_MASTER_ADDR"));
}

static void slurm_nodelist_forms(void **state)
{
	static const struct {
		const char *list, *first;
	} ok[] = {
		{"node01", "node01"},
		{"node01,node02", "node01"},
		{"node[01-04,07]", "node01"},
		{"node[7,1-3]", "node7"},
		{"node[001-010]", "node001"},
		{"gpu-a[003-005],gpu-b[1-2]", "gpu-a003"},
		{"n[1-2]-ib", "n1-ib"},
		{"r[1-2]n[3-4]", "r1n3"},
		{"host.example.com,other", "host.example.com"},
		{"a[5]", "a5"},
	};
	static const char *const bad[] = {"", ",node1", "node[", "node[]", "node[a-b]", "node]1",
					  "node[1-2", "node[1-[2]]", "[-1]"};
	char out[BOOT_ADDR_MAX], tiny[4];
	(void)state;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		assert_int_equal(boot_slurm_first_host(ok[i].list, out, sizeof(out)), 0);
		assert_string_equal(out, ok[i].first);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (boot_slurm_first_host(bad[i], out, sizeof(out)) != RDAG_EINVAL)
			fail_msg("node list '%s' accepted as '%s'", bad[i], out);
	}
	assert_int_equal(boot_slurm_first_host("node01", tiny, sizeof(tiny)), RDAG_EINVAL);
	assert_int_equal(boot_slurm_first_host("n[0001]", tiny, sizeof(tiny)), RDAG_EINVAL);
	assert_int_equal(boot_slurm_first_host("n[001]", tiny, sizeof(tiny)), RDAG_EINVAL);
	assert_int_equal(boot_slurm_first_host("n[01]", tiny, sizeof(tiny)), 0);
	assert_string_equal(tiny, "n01");
}

/* ---- precedence ------------------------------------------------------------------------- */

static void launcher_precedence(void **state)
{
	struct boot_opts o;
	(void)state;

	/* srun's variables are inherited by everything inside the allocation: others win. */
	set("SLURM_PROCID", "0");
	set("SLURM_NTASKS", "1");
	set("SLURM_JOB_ID", "9");
	set("OMPI_COMM_WORLD_RANK", "2");
	set("OMPI_COMM_WORLD_SIZE", "3");
	set("OMPI_COMM_WORLD_LOCAL_SIZE", "3");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.launcher, "openmpi");
	assert_int_equal(o.rank, 2);
	assert_int_equal(o.world_size, 3);
	assert_string_equal(o.job_token, "slurm:9"); /* the only job id present */
	set("RANK", "1");
	set("WORLD_SIZE", "5");
	set("MASTER_ADDR", "x");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.launcher, "torchrun");
	assert_int_equal(o.rank, 1);
	assert_int_equal(o.world_size, 5);
	set("RDAG_RANK", "4");
	set("RDAG_WORLD_SIZE", "6");
	assert_int_equal(resolve(&o), 0);
	assert_int_equal(o.rank, 4);
	assert_int_equal(o.world_size, 6);
	assert_string_equal(o.rank_src, "RDAG_RANK");
	assert_int_equal(o.local_rank, -1); /* the launcher's hints are not ours when RDAG_RANK rules */
	/* The caller beats every variable. */
	boot_opts_init(&o);
	o.rank = 0;
	o.world_size = 2;
	snprintf(o.master_addr, sizeof(o.master_addr), "127.0.0.1");
	o.master_port = 4242;
	snprintf(o.name, sizeof(o.name), "ps0");
	snprintf(o.host, sizeof(o.host), "fakehost");
	snprintf(o.job_token, sizeof(o.job_token), "mine");
	o.job_token_set = 1;
	o.timeout_ms = 777;
	set("RDAG_WORKER_NAME", "other");
	set("RDAG_JOB_TOKEN", "theirs");
	set("RDAG_BOOT_TIMEOUT", "5");
	set("RDAG_MASTER_PORT", "5555");
	set("RDAG_MASTER_ADDR", "elsewhere");
	assert_int_equal(boot_opts_from_env(&o), 0);
	assert_int_equal(o.rank, 0);
	assert_int_equal(o.world_size, 2);
	assert_string_equal(o.master_addr, "127.0.0.1");
	assert_int_equal(o.master_port, 4242);
	assert_string_equal(o.name, "ps0");
	assert_string_equal(o.host, "fakehost");
	assert_string_equal(o.job_token, "mine");
	assert_int_equal(o.timeout_ms, 777);
	assert_string_equal(o.rank_src, "caller");
	/* An explicitly empty token is a token too. */
	boot_opts_init(&o);
	o.job_token_set = 1;
	assert_int_equal(boot_opts_from_env(&o), 0);
	assert_string_equal(o.job_token, "");
}

static void job_token_rule(void **state)
{
	struct boot_opts o;
	int port_a, port_b;
	(void)state;

	set("RDAG_RANK", "0");
	set("RDAG_WORLD_SIZE", "1");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.job_token, "");
	assert_non_null(strstr(o.token_src, "none"));
	set("SLURM_JOB_ID", "55");
	set("SLURM_STEP_ID", "0");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.job_token, "slurm:55.0");
	set("PMIX_NAMESPACE", "prterun-x-1@1");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.job_token, "pmix:prterun-x-1@1");
	set("OMPI_MCA_ess_base_jobid", "77");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.job_token, "openmpi:77");
	set("TORCHELASTIC_RUN_ID", "r1");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.job_token, "torchrun:r1");
	port_a = o.master_port;
	set("RDAG_JOB_TOKEN", "s3cret");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.job_token, "s3cret");
	assert_string_equal(o.token_src, "RDAG_JOB_TOKEN");
	/* Without a port anywhere, the port follows from the token: same token, same port. */
	assert_string_equal(o.master_port_src, "the job token's hash");
	port_b = o.master_port;
	assert_true(port_b >= 20000 && port_b < 30000);
	assert_true(port_a >= 20000 && port_a < 30000);
	assert_int_equal(port_b, (int)(20000 + boot_fnv1a("s3cret", 6) % 10000));
	assert_int_equal(resolve(&o), 0);
	assert_int_equal(o.master_port, port_b);
	{
		char big[400];

		memset(big, 't', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		set("RDAG_JOB_TOKEN", big);
		assert_error_mentions(resolve(&o), RDAG_EINVAL, "job token");
	}
}

static void worker_names_and_timeout(void **state)
{
	struct boot_opts o;
	(void)state;

	set("RDAG_RANK", "3");
	set("RDAG_WORLD_SIZE", "4");
	set("RDAG_MASTER_ADDR", "localhost");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.name, "worker3");
	set("RDAG_WORKER_NAME", "trainer-%r");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.name, "trainer-3");
	set("RDAG_WORKER_NAME", "ps");
	assert_int_equal(resolve(&o), 0);
	assert_string_equal(o.name, "ps");
	set("RDAG_WORKER_NAME", "bad name");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "RDAG_WORKER_NAME");
	set("RDAG_WORKER_NAME", "100%%");
	assert_error_mentions(resolve(&o), RDAG_EINVAL, "100%");
	unsetenv("RDAG_WORKER_NAME");
	boot_opts_init(&o);
	snprintf(o.name, sizeof(o.name), "a/b");
	assert_error_mentions(boot_opts_from_env(&o), RDAG_EINVAL, "a/b");

	set("RDAG_BOOT_TIMEOUT", "2.5");
	assert_int_equal(resolve(&o), 0);
	assert_int_equal(o.timeout_ms, 2500);
	set("RDAG_BOOT_TIMEOUT", "soon"); /* reported, default used */
	assert_int_equal(resolve(&o), 0);
	assert_int_equal(o.timeout_ms, BOOT_DEFAULT_TIMEOUT_MS);
	set("RDAG_BOOT_TIMEOUT", "-1");
	assert_int_equal(resolve(&o), 0);
	assert_int_equal(o.timeout_ms, BOOT_DEFAULT_TIMEOUT_MS);
}

/* ---- frames ------------------------------------------------------------------------------ */

static void hdr_checks(void **state)
{
	uint8_t h[BOOT_HDR_LEN];
	struct boot_hdr d;
	(void)state;

	boot_hdr_encode(h, BOOT_HELLO, 10);
	assert_int_equal(boot_hdr_decode(h, 100, &d), 0);
	assert_int_equal(d.type, BOOT_HELLO);
	assert_int_equal(d.len, 10);
	assert_int_equal(boot_hdr_decode(h, 9, &d), RDAG_EWIRE_LENGTH);
	h[0] ^= 1;
	assert_int_equal(boot_hdr_decode(h, 100, &d), RDAG_EWIRE_MAGIC);
	h[0] ^= 1;
	h[4] = 2;
	assert_int_equal(boot_hdr_decode(h, 100, &d), RDAG_EWIRE_VERSION);
	h[4] = 1;
	h[6] = 0;
	assert_int_equal(boot_hdr_decode(h, 100, &d), RDAG_EWIRE_KIND);
	h[6] = 7;
	assert_int_equal(boot_hdr_decode(h, 100, &d), RDAG_EWIRE_KIND);
}

static void hello_round_trip_and_every_truncation(void **state)
{
	struct boot_hello h, d;
	struct boot_buf buf = {0};
	const uint8_t *body;
	size_t blen;
	(void)state;

	memset(&h, 0, sizeof(h));
	h.rank = 5;
	h.world = 9;
	h.timeout_left_ms = 1234;
	snprintf(h.token, sizeof(h.token), "tok\x01\xff");
	snprintf(h.name, sizeof(h.name), "w-5");
	snprintf(h.host, sizeof(h.host), "node5.example");
	assert_int_equal(boot_hello_encode(&buf, &h), 0);
	body = buf.p + BOOT_HDR_LEN;
	blen = buf.len - BOOT_HDR_LEN;
	assert_int_equal(boot_hello_decode(body, blen, &d), 0);
	assert_int_equal(d.rank, 5);
	assert_int_equal(d.world, 9);
	assert_int_equal(d.timeout_left_ms, 1234);
	assert_string_equal(d.token, h.token);
	assert_string_equal(d.name, "w-5");
	assert_string_equal(d.host, "node5.example");
	for (size_t n = 0; n < blen; n++)
		assert_int_equal(boot_hello_decode(body, n, &d), RDAG_EWIRE_TRUNCATED);
	{
		uint8_t *more = malloc(blen + 1);

		assert_non_null(more);
		memcpy(more, body, blen);
		more[blen] = 0;
		assert_int_equal(boot_hello_decode(more, blen + 1, &d), RDAG_EWIRE_TRAILING);
		/* Name length past its limit, a NUL inside the token, a space in the name. */
		memcpy(more, body, blen);
		more[12] = 0xff;
		more[13] = 0xff;
		assert_int_equal(boot_hello_decode(more, blen, &d), RDAG_EWIRE_LENGTH);
		memcpy(more, body, blen);
		more[14] = 0;
		assert_int_equal(boot_hello_decode(more, blen, &d), RDAG_EWIRE_FIELD);
		memcpy(more, body, blen);
		more[12 + 2 + 5 + 2 + 1] = ' ';
		assert_int_equal(boot_hello_decode(more, blen, &d), RDAG_EWIRE_FIELD);
		free(more);
	}
	boot_buf_free(&buf);
}

static void welcome_status_gather_result(void **state)
{
	char *names[3] = {"a", "b", "c"}, *hosts[3] = {"h1", "h1", "h2"};
	char *dn[4], *dh[4], msg[BOOT_MSG_MAX];
	struct boot_buf buf = {0};
	struct boot_gather_msg g;
	const void *blobs[3] = {"xyz", "", "0123456789"};
	size_t lens[3] = {3, 0, 10};
	const void *ob[3];
	size_t ol[3];
	int code;
	(void)state;

	assert_int_equal(boot_welcome_encode(&buf, 3, names, hosts), 0);
	assert_int_equal(boot_welcome_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, 3, dn, dh), 0);
	for (int i = 0; i < 3; i++) {
		assert_string_equal(dn[i], names[i]);
		assert_string_equal(dh[i], hosts[i]);
		free(dn[i]);
		free(dh[i]);
	}
	assert_int_equal(boot_welcome_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, 4, dn, dh),
			 RDAG_EWIRE_COUNT);
	for (size_t n = 0; n < buf.len - BOOT_HDR_LEN; n++)
		assert_int_not_equal(boot_welcome_decode(buf.p + BOOT_HDR_LEN, n, 3, dn, dh), 0);
	assert_true(buf.len - BOOT_HDR_LEN <= boot_welcome_max(3));
	boot_buf_free(&buf);

	assert_int_equal(boot_status_encode(&buf, BOOT_REFUSE, RDAG_EACCES, "no\nway"), 0);
	assert_int_equal(boot_status_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, &code, msg,
					    sizeof(msg)), 0);
	assert_int_equal(code, RDAG_EACCES);
	assert_string_equal(msg, "no?way");
	boot_buf_free(&buf);
	assert_int_equal(boot_status_encode(&buf, BOOT_ABORT, 5, "x"), 0); /* not a failure code */
	assert_int_equal(boot_status_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, &code, msg,
					    sizeof(msg)), 0);
	assert_int_equal(code, RDAG_EIO);
	boot_buf_free(&buf);

	assert_int_equal(boot_gather_encode(&buf, 7, BOOT_KIND_ALLGATHER, 99, "abc", 3), 0);
	assert_int_equal(boot_gather_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, &g), 0);
	assert_int_equal(g.seq, 7);
	assert_int_equal(g.kind, BOOT_KIND_ALLGATHER);
	assert_int_equal(g.timeout_left_ms, 99);
	assert_int_equal(g.len, 3);
	assert_memory_equal(g.blob, "abc", 3);
	for (size_t n = 0; n < buf.len - BOOT_HDR_LEN; n++)
		assert_int_equal(boot_gather_decode(buf.p + BOOT_HDR_LEN, n, &g), RDAG_EWIRE_TRUNCATED);
	buf.p[BOOT_HDR_LEN + 4] = 9; /* unknown kind */
	assert_int_equal(boot_gather_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, &g),
			 RDAG_EWIRE_FIELD);
	boot_buf_free(&buf);
	assert_int_equal(boot_gather_encode(&buf, 1, BOOT_KIND_ALLGATHER, 0, "", BOOT_BLOB_MAX + 1),
			 RDAG_EINVAL);
	boot_buf_free(&buf);

	assert_int_equal(boot_result_encode(&buf, 4, BOOT_KIND_BARRIER, 3, blobs, lens), 0);
	assert_true(buf.len - BOOT_HDR_LEN <= boot_result_max(3));
	assert_int_equal(boot_result_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, 4,
					    BOOT_KIND_BARRIER, 3, ob, ol), 0);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(ol[i], lens[i]);
		assert_memory_equal(ob[i], blobs[i], lens[i]);
	}
	assert_int_equal(boot_result_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, 5,
					    BOOT_KIND_BARRIER, 3, ob, ol), RDAG_EWIRE_FIELD);
	assert_int_equal(boot_result_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, 4,
					    BOOT_KIND_ALLGATHER, 3, ob, ol), RDAG_EWIRE_FIELD);
	assert_int_equal(boot_result_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, 4,
					    BOOT_KIND_BARRIER, 2, ob, ol), RDAG_EWIRE_COUNT);
	for (size_t n = 0; n < buf.len - BOOT_HDR_LEN; n++)
		assert_int_not_equal(boot_result_decode(buf.p + BOOT_HDR_LEN, n, 4, BOOT_KIND_BARRIER, 3,
							ob, ol), 0);
	/* A length field pointing past the end. */
	buf.p[BOOT_HDR_LEN + 12] = 0xff;
	assert_int_equal(boot_result_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, 4,
					    BOOT_KIND_BARRIER, 3, ob, ol), RDAG_EWIRE_TRUNCATED);
	buf.p[BOOT_HDR_LEN + 15] = 0x7f;
	assert_int_equal(boot_result_decode(buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN, 4,
					    BOOT_KIND_BARRIER, 3, ob, ol), RDAG_EWIRE_LENGTH);
	boot_buf_free(&buf);
}

static void world_of_one(void **state)
{
	struct boot_opts o;
	struct boot *b = NULL;
	struct boot_gather g;
	static char big[BOOT_BLOB_MAX + 1];
	uint32_t v = 42, out = 0;
	(void)state;

	boot_opts_init(&o);
	o.rank = 0;
	o.world_size = 1;
	assert_int_equal(boot_open(&o, &b), 0);
	assert_int_equal(boot_rank(b), 0);
	assert_int_equal(boot_world(b), 1);
	assert_string_equal(boot_name(b, 0), "worker0");
	assert_null(boot_name(b, 1));
	assert_int_equal(boot_local_size(b), 1);
	assert_int_equal(boot_all_local(b), 1);
	assert_int_equal(boot_allgather(b, "hi", 2, &g), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(g.lens[0], 2);
	assert_memory_equal(g.blobs[0], "hi", 2);
	assert_int_equal(boot_allgather(b, big, sizeof(big), &g), RDAG_EINVAL); /* local error... */
	assert_int_equal(boot_barrier(b), 0);                                 /* ...handle still fine */
	assert_int_equal(boot_allgather_fixed(b, &v, sizeof(v), &out), 0);
	assert_int_equal(out, 42);
	assert_int_equal(boot_check(b), 0);
	boot_close(b);
	boot_close(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(nothing_set_is_a_clear_error, clear_env),
		cmocka_unit_test_setup(torchrun_environment, clear_env),
		cmocka_unit_test_setup(torchrun_without_master_addr_fails, clear_env),
		cmocka_unit_test_setup(rank_without_world_size_fails, clear_env),
		cmocka_unit_test_setup(bad_numbers_name_their_variable, clear_env),
		cmocka_unit_test_setup(openmpi_on_one_host_uses_localhost, clear_env),
		cmocka_unit_test_setup(openmpi_on_many_hosts_needs_master_addr, clear_env),
		cmocka_unit_test_setup(slurm_environment, clear_env),
		cmocka_unit_test_setup(slurm_nodelist_forms, clear_env),
		cmocka_unit_test_setup(launcher_precedence, clear_env),
		cmocka_unit_test_setup(job_token_rule, clear_env),
		cmocka_unit_test_setup(worker_names_and_timeout, clear_env),
		cmocka_unit_test(hdr_checks),
		cmocka_unit_test(hello_round_trip_and_every_truncation),
		cmocka_unit_test(welcome_status_gather_result),
		cmocka_unit_test_setup(world_of_one, clear_env),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
