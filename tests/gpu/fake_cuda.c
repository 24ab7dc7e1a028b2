/* A stand-in libcuda for the unit tests: every entry point rdag loads, a driver that sees no GPU. */
#include <stddef.h>

/*
 * Built twice: fake_cuda_nodev (the whole table; cuInit says CUDA_ERROR_NO_DEVICE, as the real
 * driver does on a host without a GPU) and fake_cuda_old (-DFAKE_OLD: without
 * cuMemGetHandleForAddressRange, as a driver older than CUDA 11.7). Signatures are reduced to
 * what the calls return: rdag only calls cuDriverGetVersion, cuGetErrorString and cuInit here.
 */
#define NO_DEVICE 100

#define STUB(name) \
	int name(void); \
	int name(void) { return NO_DEVICE; }

int cuDriverGetVersion(int *v);
int cuDriverGetVersion(int *v)
{
	*v = 13000;
	return 0;
}

int cuGetErrorString(int r, const char **s);
int cuGetErrorString(int r, const char **s)
{
	*s = r == NO_DEVICE ? "no CUDA-capable device is detected" : "fake driver error";
	return 0;
}

STUB(cuInit)
STUB(cuDeviceGetCount)
STUB(cuDeviceGet)
STUB(cuDeviceGetName)
STUB(cuDeviceGetAttribute)
STUB(cuDeviceGetPCIBusId)
STUB(cuDeviceTotalMem_v2)
STUB(cuDevicePrimaryCtxRetain)
STUB(cuDevicePrimaryCtxRelease_v2)
STUB(cuCtxSetCurrent)
STUB(cuPointerGetAttributes)
STUB(cuMemAlloc_v2)
STUB(cuMemFree_v2)
STUB(cuMemHostAlloc)
STUB(cuMemFreeHost)
STUB(cuMemcpyHtoD_v2)
STUB(cuMemcpyDtoH_v2)
STUB(cuMemcpyHtoDAsync_v2)
STUB(cuMemcpyDtoHAsync_v2)
STUB(cuMemsetD8_v2)
#ifndef FAKE_OLD
STUB(cuMemGetHandleForAddressRange)
#endif
STUB(cuStreamCreate)
STUB(cuStreamDestroy_v2)
STUB(cuEventCreate)
STUB(cuEventRecord)
STUB(cuEventQuery)
STUB(cuEventDestroy_v2)
