/* Public tensor helpers: element sizes, byte counts, initialisation. */
#include <string.h>

#include <rdag/tensor.h>

#include "wire/wire.h"

size_t rdag_dtype_size(int dtype)
{
	return dtype > 0 && dtype < 256 ? wire_dtype_size((uint8_t)dtype) : 0;
}

size_t rdag_tensor_nbytes(const struct rdag_tensor *t)
{
	size_t n;

	if (!t || t->ndim > RDAG_MAX_DIMS)
		return 0;
	n = rdag_dtype_size(t->dtype);
	for (unsigned i = 0; i < t->ndim; i++)
		n *= t->shape[i] > 0 ? (size_t)t->shape[i] : 0;
	return n;
}

void rdag_tensor_init(struct rdag_tensor *t, void *data, int dtype, unsigned ndim, const int64_t *shape)
{
	memset(t, 0, sizeof(*t));
	t->data = data;
	t->dtype = (uint8_t)dtype;
	t->ndim = (uint8_t)(ndim <= RDAG_MAX_DIMS ? ndim : RDAG_MAX_DIMS);
	t->device_type = RDAG_DEV_CPU;
	if (shape)
		memcpy(t->shape, shape, t->ndim * sizeof(t->shape[0]));
}
