/* Writes the fuzz seed corpus (every sample message, per decoder family) and the docs' hex example. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <rdag/error.h>

#include "families.h"
#include "samples.h"

static int mkdir_p(const char *path)
{
	if (mkdir(path, 0755) && errno != EEXIST) {
		perror(path);
		return -1;
	}
	return 0;
}

static int write_corpus(const char *dir)
{
	char path[4096];
	unsigned written = 0;

	if (mkdir_p(dir))
		return 1;
	for (unsigned f = 0; f < FUZZ_NFAMILIES; f++) {
		snprintf(path, sizeof(path), "%s/fuzz_%s", dir, fuzz_families[f].name);
		if (mkdir_p(path))
			return 1;
		for (unsigned i = 0; i < sample_count(); i++) {
			size_t len;
			uint8_t *buf = sample_alloc(i, &len);
			FILE *fp;

			if (!fuzz_family_has(&fuzz_families[f], buf[5])) {
				free(buf);
				continue;
			}
			snprintf(path, sizeof(path), "%s/fuzz_%s/%s.bin", dir, fuzz_families[f].name,
				 sample_name(i));
			fp = fopen(path, "wb");
			if (!fp || fwrite(buf, 1, len, fp) != len || fclose(fp)) {
				perror(path);
				return 1;
			}
			free(buf);
			written++;
		}
	}
	printf("%u seeds written under %s\n", written, dir);
	return 0;
}

static int print_hex(void)
{
	uint8_t buf[512];
	size_t len;

	if (sample_doc_grad_req(buf, sizeof(buf), &len)) {
		fprintf(stderr, "encoding the example failed: %s\n", rdag_last_error());
		return 1;
	}
	for (size_t off = 0; off < len; off += 16) {
		printf("%04zx:", off);
		for (size_t i = off; i < off + 16 && i < len; i++)
			printf("%s%02x", i == off + 8 ? "  " : " ", buf[i]);
		printf("\n");
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "corpus") == 0)
		return write_corpus(argv[2]);
	if (argc == 2 && strcmp(argv[1], "hex") == 0)
		return print_hex();
	fprintf(stderr, "usage: %s corpus <dir>   write the seed corpus (one folder per fuzz target)\n"
			"       %s hex            print the PropagateGradientsReq of docs/wire-format.md\n",
		argv[0], argv[0]);
	return 2;
}
