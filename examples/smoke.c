/* Smoke program: links the shared library and prints its version. */
#include <stdio.h>

#include <rdag/rdag.h>

int main(void)
{
	printf("rdag %s\n", rdag_version());
	return 0;
}
