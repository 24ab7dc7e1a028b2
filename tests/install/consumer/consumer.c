/* Outside consumer of an installed rdag: checks headers, linking and the error API. */
#include <stdio.h>
#include <string.h>

#include <rdag/rdag.h>

int main(void)
{
	if (strcmp(rdag_version(), RDAG_VERSION_STRING) != 0)
		return 1;
	if (strcmp(rdag_strerror(RDAG_EINVAL), "invalid argument") != 0)
		return 2;
	printf("rdag %s ok\n", rdag_version());
	return 0;
}
