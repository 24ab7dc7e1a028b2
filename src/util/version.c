/* rdag_version(): the version of the library actually linked. */
#include <rdag/version.h>

RDAG_API const char *rdag_version(void)
{
	return RDAG_VERSION_STRING;
}
