/* gpu/ private: the CUDA driver entry points loaded with dlopen, shared by the gpu/ sources. */
#ifndef RDAG_GPU_CUDA_H
#define RDAG_GPU_CUDA_H

#include <cuda.h>

/*
 * Every entry point is looked up by its exported (versioned) name, the one cuda.h's macros
 * map the plain name to for this CUDA version, so the table matches the headers it was
 * compiled against.
 */
struct gpu_cu {
	CUresult (*Init)(unsigned int);
	CUresult (*DriverGetVersion)(int *);
	CUresult (*GetErrorString)(CUresult, const char **);
	CUresult (*DeviceGetCount)(int *);
	CUresult (*DeviceGet)(CUdevice *, int);
	CUresult (*DeviceGetName)(char *, int, CUdevice);
	CUresult (*DeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
	CUresult (*DeviceGetPCIBusId)(char *, int, CUdevice);
	CUresult (*DeviceTotalMem)(size_t *, CUdevice);
	CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
	CUresult (*DevicePrimaryCtxRelease)(CUdevice);
	CUresult (*CtxSetCurrent)(CUcontext);
	CUresult (*PointerGetAttributes)(unsigned int, CUpointer_attribute *, void **, CUdeviceptr);
	CUresult (*MemAlloc)(CUdeviceptr *, size_t);
	CUresult (*MemFree)(CUdeviceptr);
	CUresult (*MemHostAlloc)(void **, size_t, unsigned int);
	CUresult (*MemFreeHost)(void *);
	CUresult (*MemcpyHtoD)(CUdeviceptr, const void *, size_t);
	CUresult (*MemcpyDtoH)(void *, CUdeviceptr, size_t);
	CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
	CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
	CUresult (*MemsetD8)(CUdeviceptr, unsigned char, size_t);
	CUresult (*MemGetHandleForAddressRange)(void *, CUdeviceptr, size_t, CUmemRangeHandleType,
						unsigned long long);
	CUresult (*StreamCreate)(CUstream *, unsigned int);
	CUresult (*StreamDestroy)(CUstream);
	CUresult (*EventCreate)(CUevent *, unsigned int);
	CUresult (*EventRecord)(CUevent, CUstream);
	CUresult (*EventQuery)(CUevent);
	CUresult (*EventDestroy)(CUevent);
};

/*
 * The loaded table once gpu_init() succeeded (a device exists), else NULL with gpu_init's code
 * in *rc (and its message recorded again for rdag_last_error).
 */
const struct gpu_cu *gpu_cu_get(int *rc);

/* Records "gpu: <what>: <driver's text> (CUresult n)" and returns the matching RDAG_E* code. */
int gpu_cu_err(CUresult r, const char *what);

#endif /* RDAG_GPU_CUDA_H */
