/* The NCCL half of gpu/ when NCCL (or CUDA) was not found at build time: every call says so. */
#include "gpu/gpu.h"
#include "util/err.h"

static int no_nccl(void)
{
	if (!gpu_built())
		return err_set(RDAG_ENOCUDA, "gpu: this librdag was built without CUDA, hence without NCCL");
	return err_set(RDAG_ENONCCL, "gpu: this librdag was built without NCCL (nccl.h / libnccl not "
				     "found at configure time)");
}

int gpu_nccl_load(int *version)
{
	if (version)
		*version = 0;
	return no_nccl();
}

int gpu_nccl_id_create(uint8_t *id, size_t len)
{
	return no_nccl();
}

int gpu_nccl_comm_open(const uint8_t *id, size_t len, int pair_rank, int device, int timeout_ms,
		       struct gpu_nccl_comm **out)
{
	if (out)
		*out = NULL;
	return no_nccl();
}

int gpu_nccl_comm_ready(struct gpu_nccl_comm *c)
{
	return no_nccl();
}

void gpu_nccl_comm_close(struct gpu_nccl_comm *c)
{
}

int gpu_nccl_post(struct gpu_nccl_comm *c, const struct gpu_nccl_buf *bufs, size_t n,
		  struct gpu_nccl_req **req)
{
	if (req)
		*req = NULL;
	return no_nccl();
}

int gpu_nccl_test(struct gpu_nccl_req *req)
{
	return no_nccl();
}

void gpu_nccl_req_free(struct gpu_nccl_req *req)
{
}
