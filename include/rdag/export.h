/* Symbol visibility for rdag's public API: RDAG_API marks what the shared library exports. */
#ifndef RDAG_EXPORT_H
#define RDAG_EXPORT_H

#if defined(RDAG_BUILDING_LIBRARY) && defined(__GNUC__)
#define RDAG_API __attribute__((visibility("default")))
#else
#define RDAG_API
#endif

#endif /* RDAG_EXPORT_H */
