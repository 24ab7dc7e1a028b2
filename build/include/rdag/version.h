/* rdag's version, fixed at configure time. */
#ifndef RDAG_VERSION_H
#define RDAG_VERSION_H

#include <rdag/export.h>

#define RDAG_VERSION_MAJOR 0
#define RDAG_VERSION_MINOR 1
#define RDAG_VERSION_PATCH 0
#define RDAG_VERSION_STRING "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/* The version of the library actually linked, as "major.minor.patch". Thread-safe. */
RDAG_API const char *rdag_version(void);

#ifdef __cplusplus
}
#endif

#endif /* RDAG_VERSION_H */
