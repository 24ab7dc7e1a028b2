/* Unit tests of status codes, rdag_strerror() and the per-thread last-error message. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include <rdag/rdag.h>

#include "util/err.h"

static void strerror_knows_every_code(void **state)
{
	static const int codes[] = {RDAG_OK, RDAG_EINVAL, RDAG_ENOMEM, RDAG_EAGAIN, RDAG_ETIMEDOUT,
				    RDAG_EWIRE_TRUNCATED, RDAG_EWIRE_MAGIC, RDAG_EWIRE_VERSION,
				    RDAG_EWIRE_KIND, RDAG_EWIRE_LENGTH, RDAG_EWIRE_TRAILING,
				    RDAG_EWIRE_COUNT, RDAG_EWIRE_SHAPE, RDAG_EWIRE_NESTING,
				    RDAG_EREMOTE, RDAG_EPEER_DEAD, RDAG_ENOCUDA, RDAG_ENOGPU};
	(void)state;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		assert_string_not_equal(rdag_strerror(codes[i]), "unknown error");
	assert_string_equal(rdag_strerror(12345), "unknown error");
	assert_string_equal(rdag_strerror(RDAG_EINVAL), "invalid argument");
}

static void *other_thread(void *arg)
{
	(void)arg;
	/* A fresh thread starts with no message, whatever the main thread recorded. */
	return (void *)(strcmp(rdag_last_error(), "") == 0 ? (void *)1 : NULL);
}

static void last_error_is_per_thread(void **state)
{
	pthread_t t;
	void *ok = NULL;
	(void)state;

	assert_int_equal(err_set(RDAG_EINVAL, "context %llu unknown", 42ULL), RDAG_EINVAL);
	assert_string_equal(rdag_last_error(), "context 42 unknown");
	assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
	assert_int_equal(pthread_join(t, &ok), 0);
	assert_non_null(ok);
	assert_string_equal(rdag_last_error(), "context 42 unknown");
	err_clear();
	assert_string_equal(rdag_last_error(), "");
}

static void last_error_truncates_long_messages(void **state)
{
	char big[2000];
	(void)state;

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	err_set(RDAG_EIO, "%s", big);
	assert_true(strlen(rdag_last_error()) > 100);
	assert_true(strlen(rdag_last_error()) < sizeof(big));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(strerror_knows_every_code),
		cmocka_unit_test(last_error_is_per_thread),
		cmocka_unit_test(last_error_truncates_long_messages),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
