/* Sizes from the environment (see envsize.h). */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>

#include "util/envsize.h"
#include "util/log.h"

int rdag_parse_size(const char *s, size_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || s[0] == '-')
		return -1;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	default: break;
	}
	if (*end == 'i')
		end++;
	if (*end == 'B')
		end++;
	if (*end || (shift && v > (ULLONG_MAX >> shift)) || v > SIZE_MAX >> shift)
		return -1;
	*out = (size_t)(v << shift);
	return 0;
}

size_t rdag_env_size(const char *name, size_t def, size_t lo, size_t hi)
{
	const char *s = getenv(name);
	size_t v;

	if (!s || !*s)
		return def;
	if (rdag_parse_size(s, &v) || v < lo || v > hi) {
		LOG_WARN("%s='%s' is not a size in [%zu, %zu]; using %zu", name, s, lo, hi, def);
		return def;
	}
	return v;
}
