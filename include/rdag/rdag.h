/* rdag: distributed autograd over RDMA fabrics. Umbrella header of the public API. */
#ifndef RDAG_RDAG_H
#define RDAG_RDAG_H

#include <rdag/export.h>
#include <rdag/error.h>
#include <rdag/version.h>
#include <rdag/tensor.h>
#include <rdag/agent.h>
#include <rdag/context.h>
#include <rdag/rpc.h>
#include <rdag/graph.h>
#include <rdag/backward.h>

#endif /* RDAG_RDAG_H */
