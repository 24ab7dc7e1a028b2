/* The ofi provider over shm removes a region left by a killed process that had our pid, instead of failing. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <rdag/rdag.h>

#include "fabric/fabric.h"

/* In a child (a fresh pid): plant /dev/shm/<pid>:0:0 as a SIGKILLed process would, then open. */
static int child(void)
{
	char path[64];
	struct fab_open_opts fo;
	struct fab_ep *ep;
	struct stat st;
	int fd, rc;

	snprintf(path, sizeof(path), "/dev/shm/%d:0:0", (int)getpid());
	fd = open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
	if (fd < 0 || ftruncate(fd, 4096) != 0)
		return 3;
	close(fd);
	fab_opts_from_env(&fo);
	fo.provider = "ofi";
	fo.ofi_provider = "shm";
	fo.local_only = 1;
	rc = fab_open(&fo, &ep);
	if (rc == RDAG_ENODEV || rc == RDAG_ENOSYS) {
		unlink(path);
		return 77;
	}
	if (rc) {
		fprintf(stderr, "fab_open: %s\n", rdag_last_error());
		unlink(path);
		return 1;
	}
	/* The region there now is the endpoint's own (libfabric's size, not our 4096 bytes). */
	rc = stat(path, &st) == 0 && st.st_size != 4096 ? 0 : 2;
	fab_close(ep);
	return rc;
}

static void stale_region_is_replaced(void **state)
{
	pid_t p;
	int st;

	(void)state;
	p = fork();
	assert_true(p >= 0);
	if (p == 0)
		_exit(child());
	assert_int_equal(waitpid(p, &st, 0), p);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 77)
		skip();
	assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(stale_region_is_replaced),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
