/* CUDA driver API loaded with dlopen: device detection, pointer classification, device memory. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu/gpu.h"
#include "gpu/gpu_cuda.h"
#include "util/err.h"
#include "util/log.h"

#define DEFAULT_CUDA_LIBRARY "libcuda.so.1"

/* The outcome of the one load attempt (pthread_once). */
static struct {
	pthread_once_t once;
	struct gpu_cu cu;
	void *handle;
	int rc;                 /* gpu_init's answer */
	int driver_loaded;
	int driver_version;
	int ndevices;
	char library[128];
	char msg[256];          /* the detailed message of rc, replayed by every later failure */
} ld = {.once = PTHREAD_ONCE_INIT};

int gpu_built(void)
{
	return 1;
}

int gpu_cu_err(CUresult r, const char *what)
{
	const char *s = NULL;

	if (ld.cu.GetErrorString)
		ld.cu.GetErrorString(r, &s);
	switch (r) {
	case CUDA_ERROR_NO_DEVICE:
	case CUDA_ERROR_INVALID_DEVICE:
		return err_set(RDAG_ENOGPU, "gpu: %s: %s (CUresult %d)", what, s ? s : "no device", (int)r);
	case CUDA_ERROR_OUT_OF_MEMORY:
		return err_set(RDAG_ENOMEM, "gpu: %s: %s (CUresult %d)", what, s ? s : "out of memory", (int)r);
	case CUDA_ERROR_INVALID_VALUE:
		return err_set(RDAG_EINVAL, "gpu: %s: %s (CUresult %d)", what, s ? s : "invalid value", (int)r);
	case CUDA_ERROR_NOT_SUPPORTED:
		return err_set(RDAG_ENOSYS, "gpu: %s: %s (CUresult %d)", what, s ? s : "not supported", (int)r);
	case CUDA_ERROR_NOT_READY:
		return RDAG_EAGAIN;
	default:
		return err_set(RDAG_EIO, "gpu: %s: %s (CUresult %d)", what, s ? s : "CUDA error", (int)r);
	}
}

/* Notes the load's failure: code and message, kept for every later call. */
static void load_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void load_fail(int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ld.msg, sizeof(ld.msg), fmt, ap);
	va_end(ap);
	ld.rc = rc;
}

static void load_once(void)
{
	static const struct {
		const char *name;
		size_t off;
	} syms[] = {
#define SYM(field, name) {name, offsetof(struct gpu_cu, field)}
		SYM(Init, "cuInit"),
		SYM(DriverGetVersion, "cuDriverGetVersion"),
		SYM(GetErrorString, "cuGetErrorString"),
		SYM(DeviceGetCount, "cuDeviceGetCount"),
		SYM(DeviceGet, "cuDeviceGet"),
		SYM(DeviceGetName, "cuDeviceGetName"),
		SYM(DeviceGetAttribute, "cuDeviceGetAttribute"),
		SYM(DeviceGetPCIBusId, "cuDeviceGetPCIBusId"),
		SYM(DeviceTotalMem, "cuDeviceTotalMem_v2"),
		SYM(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"),
		SYM(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2"),
		SYM(CtxSetCurrent, "cuCtxSetCurrent"),
		SYM(PointerGetAttributes, "cuPointerGetAttributes"),
		SYM(MemAlloc, "cuMemAlloc_v2"),
		SYM(MemFree, "cuMemFree_v2"),
		SYM(MemHostAlloc, "cuMemHostAlloc"),
		SYM(MemFreeHost, "cuMemFreeHost"),
		SYM(MemcpyHtoD, "cuMemcpyHtoD_v2"),
		SYM(MemcpyDtoH, "cuMemcpyDtoH_v2"),
		SYM(MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"),
		SYM(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2"),
		SYM(MemsetD8, "cuMemsetD8_v2"),
		SYM(MemGetHandleForAddressRange, "cuMemGetHandleForAddressRange"),
		SYM(StreamCreate, "cuStreamCreate"),
		SYM(StreamDestroy, "cuStreamDestroy_v2"),
		SYM(EventCreate, "cuEventCreate"),
		SYM(EventRecord, "cuEventRecord"),
		SYM(EventQuery, "cuEventQuery"),
		SYM(EventDestroy, "cuEventDestroy_v2"),
#undef SYM
	};
	const char *lib = getenv("RDAG_CUDA_LIBRARY");
	const char *s = NULL;
	CUresult r;
	int n = 0;

	if (!lib || !lib[0])
		lib = DEFAULT_CUDA_LIBRARY;
	snprintf(ld.library, sizeof(ld.library), "%s", lib);
	ld.handle = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!ld.handle) {
		const char *e = dlerror();

		load_fail(RDAG_ENOCUDA_DRIVER, "gpu: the CUDA driver is missing: dlopen(%s): %s", lib,
			  e ? e : "failed");
		return;
	}
	for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
		void *f = dlsym(ld.handle, syms[i].name);

		if (!f) {
			load_fail(RDAG_ENOCUDA_DRIVER, "gpu: the CUDA driver %s lacks %s (too old for "
						       "this build, CUDA %d)",
				  lib, syms[i].name, CUDA_VERSION);
			goto fail;
		}
		memcpy((char *)&ld.cu + syms[i].off, &f, sizeof(f));
	}
	ld.cu.DriverGetVersion(&ld.driver_version);
	r = ld.cu.Init(0);
	if (r == CUDA_ERROR_NO_DEVICE) {
		ld.driver_loaded = 1;
		load_fail(RDAG_ENOGPU, "gpu: no GPU device: cuInit: the driver %s (version %d) found "
				       "no CUDA device",
			  lib, ld.driver_version);
		return; /* the table stays for pointer classification; nothing is device memory */
	}
	if (r != CUDA_SUCCESS) {
		ld.cu.GetErrorString(r, &s);
		load_fail(RDAG_ENOCUDA_DRIVER, "gpu: the CUDA driver %s is unusable: cuInit: %s (CUresult %d)",
			  lib, s ? s : "error", (int)r);
		goto fail;
	}
	ld.driver_loaded = 1;
	r = ld.cu.DeviceGetCount(&n);
	if (r != CUDA_SUCCESS || n <= 0) {
		load_fail(RDAG_ENOGPU, "gpu: no GPU device: cuDeviceGetCount gave %d (CUresult %d)", n,
			  (int)r);
		return;
	}
	ld.ndevices = n;
	ld.rc = 0;
	snprintf(ld.msg, sizeof(ld.msg), "%d device%s, driver %d", n, n == 1 ? "" : "s",
		 ld.driver_version);
	LOG_INFO("gpu: %s loaded: %s", lib, ld.msg);
	return;
fail:
	memset(&ld.cu, 0, sizeof(ld.cu));
	dlclose(ld.handle);
	ld.handle = NULL;
}

int gpu_init(void)
{
	pthread_once(&ld.once, load_once);
	if (ld.rc)
		return err_set(ld.rc, "%s", ld.msg);
	return 0;
}

const struct gpu_cu *gpu_cu_get(int *rc)
{
	int r = gpu_init();

	if (rc)
		*rc = r;
	return r ? NULL : &ld.cu;
}

int gpu_probe(struct gpu_info *info)
{
	int rc = gpu_init();

	memset(info, 0, sizeof(*info));
	info->built = 1;
	info->driver_loaded = ld.driver_loaded;
	info->driver_version = ld.driver_version;
	info->ndevices = ld.ndevices;
	snprintf(info->library, sizeof(info->library), "%s", ld.library);
	snprintf(info->why, sizeof(info->why), "%s", ld.msg);
	return rc;
}

static int check_device(int device, CUdevice *dev)
{
	CUresult r;
	int rc = gpu_init();

	if (rc)
		return rc;
	if (device < 0 || device >= ld.ndevices)
		return err_set(RDAG_ENOGPU, "gpu: no GPU device %d (%d present)", device, ld.ndevices);
	r = ld.cu.DeviceGet(dev, device);
	if (r != CUDA_SUCCESS)
		return gpu_cu_err(r, "cuDeviceGet");
	return 0;
}

int gpu_device_query(int device, struct gpu_device_info *out)
{
	CUdevice dev;
	int v = 0, rc;

	memset(out, 0, sizeof(*out));
	rc = check_device(device, &dev);
	if (rc)
		return rc;
	if (ld.cu.DeviceGetName(out->name, (int)sizeof(out->name), dev) != CUDA_SUCCESS)
		snprintf(out->name, sizeof(out->name), "device %d", device);
	if (ld.cu.DeviceGetPCIBusId(out->pci_bus_id, (int)sizeof(out->pci_bus_id), dev) != CUDA_SUCCESS)
		out->pci_bus_id[0] = '\0';
	ld.cu.DeviceTotalMem(&out->total_mem, dev);
	if (ld.cu.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED, dev) == CUDA_SUCCESS)
		out->dmabuf_supported = v != 0;
	v = 0;
	if (ld.cu.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED, dev) ==
	    CUDA_SUCCESS)
		out->gdr_supported = v != 0;
	return 0;
}

int gpu_dmabuf_supported(int device)
{
	struct gpu_device_info di;
	int rc = gpu_device_query(device, &di);

	return rc ? rc : di.dmabuf_supported;
}

int gpu_set_device(int device)
{
	/* Primary contexts retained once per device for the process's life (as CUDA's runtime). */
	static CUcontext ctxs[64];
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	CUcontext ctx;
	CUdevice dev;
	CUresult r;
	int rc = check_device(device, &dev);

	if (rc)
		return rc;
	if (device >= (int)(sizeof(ctxs) / sizeof(ctxs[0])))
		return err_set(RDAG_ERANGE, "gpu: device %d above the 64 rdag supports", device);
	pthread_mutex_lock(&lock);
	ctx = ctxs[device];
	if (!ctx) {
		r = ld.cu.DevicePrimaryCtxRetain(&ctx, dev);
		if (r != CUDA_SUCCESS) {
			pthread_mutex_unlock(&lock);
			return gpu_cu_err(r, "cuDevicePrimaryCtxRetain");
		}
		ctxs[device] = ctx;
	}
	pthread_mutex_unlock(&lock);
	r = ld.cu.CtxSetCurrent(ctx);
	return r == CUDA_SUCCESS ? 0 : gpu_cu_err(r, "cuCtxSetCurrent");
}

int gpu_ptr_classify(const void *ptr, struct gpu_ptr_info *out)
{
	CUpointer_attribute attrs[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
				       CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
				       CU_POINTER_ATTRIBUTE_BUFFER_ID,
				       CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
				       CU_POINTER_ATTRIBUTE_RANGE_SIZE,
				       CU_POINTER_ATTRIBUTE_IS_MANAGED};
	unsigned int memtype = 0;
	int ordinal = -1;
	unsigned long long id = 0;
	CUdeviceptr start = 0;
	size_t size = 0;
	unsigned int managed = 0;
	void *data[] = {&memtype, &ordinal, &id, &start, &size, &managed};
	CUresult r;

	if (!out)
		return err_set(RDAG_EINVAL, "gpu: gpu_ptr_classify without an output");
	memset(out, 0, sizeof(*out));
	out->type = GPU_MEM_HOST;
	out->device = -1;
	pthread_once(&ld.once, load_once);
	if (ld.rc || !ptr)
		return 0; /* no driver or no device: nothing is device memory */
	r = ld.cu.PointerGetAttributes((unsigned int)(sizeof(attrs) / sizeof(attrs[0])), attrs, data,
				       (CUdeviceptr)(uintptr_t)ptr);
	if (r != CUDA_SUCCESS)
		return gpu_cu_err(r, "cuPointerGetAttributes");
	if (managed)
		out->type = GPU_MEM_MANAGED;
	else if (memtype == CU_MEMORYTYPE_DEVICE)
		out->type = GPU_MEM_DEVICE;
	else if (memtype == CU_MEMORYTYPE_HOST)
		out->type = GPU_MEM_HOST_PINNED;
	else
		return 0; /* unknown to CUDA: plain host memory */
	out->device = out->type == GPU_MEM_HOST_PINNED ? -1 : ordinal;
	out->buffer_id = id;
	out->base = (uintptr_t)start;
	out->size = size;
	return 0;
}

int gpu_mem_alloc(int device, size_t len, void **out)
{
	CUdeviceptr p = 0;
	CUresult r;
	int rc;

	if (!out || !len)
		return err_set(RDAG_EINVAL, "gpu: gpu_mem_alloc of %zu bytes", len);
	*out = NULL;
	rc = gpu_set_device(device);
	if (rc)
		return rc;
	r = ld.cu.MemAlloc(&p, len);
	if (r != CUDA_SUCCESS)
		return gpu_cu_err(r, "cuMemAlloc");
	*out = (void *)(uintptr_t)p;
	return 0;
}

/* Makes the context of the device holding dptr current (driver calls need one). */
static int set_device_of(const void *dptr, const char *what)
{
	struct gpu_ptr_info pi;
	int rc = gpu_init();

	if (rc)
		return rc;
	rc = gpu_ptr_classify(dptr, &pi);
	if (rc)
		return rc;
	if (pi.type != GPU_MEM_DEVICE && pi.type != GPU_MEM_MANAGED)
		return err_set(RDAG_EINVAL, "gpu: %s: %p is not device memory", what, dptr);
	return gpu_set_device(pi.device);
}

void gpu_mem_free(void *dptr)
{
	if (dptr && set_device_of(dptr, "cuMemFree") == 0)
		ld.cu.MemFree((CUdeviceptr)(uintptr_t)dptr);
}

int gpu_memcpy_htod(void *dst, const void *src, size_t len)
{
	CUresult r;
	int rc = set_device_of(dst, "cuMemcpyHtoD");

	if (rc)
		return rc;
	r = ld.cu.MemcpyHtoD((CUdeviceptr)(uintptr_t)dst, src, len);
	return r == CUDA_SUCCESS ? 0 : gpu_cu_err(r, "cuMemcpyHtoD");
}

int gpu_memcpy_dtoh(void *dst, const void *src, size_t len)
{
	CUresult r;
	int rc = set_device_of(src, "cuMemcpyDtoH");

	if (rc)
		return rc;
	r = ld.cu.MemcpyDtoH(dst, (CUdeviceptr)(uintptr_t)src, len);
	return r == CUDA_SUCCESS ? 0 : gpu_cu_err(r, "cuMemcpyDtoH");
}

int gpu_memset(void *dst, uint8_t byte, size_t len)
{
	CUresult r;
	int rc = set_device_of(dst, "cuMemsetD8");

	if (rc)
		return rc;
	r = ld.cu.MemsetD8((CUdeviceptr)(uintptr_t)dst, byte, len);
	return r == CUDA_SUCCESS ? 0 : gpu_cu_err(r, "cuMemsetD8");
}

int gpu_dmabuf_get(const void *addr, size_t len, int *fd, uint64_t *offset)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = (uintptr_t)addr, base, end;
	int h = -1;
	CUresult r;
	int rc = gpu_init();

	if (rc)
		return rc;
	if (!addr || !len || !fd || !offset)
		return err_set(RDAG_EINVAL, "gpu: gpu_dmabuf_get(%p, %zu bytes)", addr, len);
	rc = set_device_of(addr, "cuMemGetHandleForAddressRange");
	if (rc)
		return rc;
	/* The driver wants a page-aligned range; the registration then starts at the offset. */
	base = a & ~(pg - 1);
	end = (a + len + pg - 1) & ~(pg - 1);
	r = ld.cu.MemGetHandleForAddressRange(&h, (CUdeviceptr)base, (size_t)(end - base),
					      CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
	if (r != CUDA_SUCCESS)
		return gpu_cu_err(r, "cuMemGetHandleForAddressRange(DMA_BUF_FD)");
	*fd = h;
	*offset = (uint64_t)(a - base);
	return 0;
}
