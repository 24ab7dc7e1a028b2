/*
 * A simulated NCCL for hosts without a GPU, built into the simulated CUDA driver's library
 * (sim_cuda.c): the point-to-point subset rdag loads, between two processes of one host.
 *
 * - ncclGetUniqueId binds a listening Unix socket in the abstract namespace and puts its name in
 *   the id; the process that made the id must be rank 0 of the communicator (as rdag uses it).
 *   ncclCommInitRank blocks until both ranks joined (rank 0 waits at most SIM_NCCL_TIMEOUT_MS,
 *   60000 by default), on the thread's current device. ncclCommInitRankConfig with blocking = 0
 *   returns ncclInProgress at once and joins on a thread of its own: ncclCommGetAsyncError
 *   says ncclInProgress until it ended, ncclCommAbort ends it early; groups on such a
 *   communicator end with ncclInProgress (as NCCL's may), their transfers already queued.
 * - SIM_NCCL_STALL_JOIN=1 makes this process's joins never reach the peer (a peer that said
 *   yes and then hangs): a blocking join waits for ever, a non-blocking one until aborted.
 * - Only communicators of two ranks. ncclSend/ncclRecv need a buffer of the communicator's
 *   device (ncclInvalidArgument otherwise, as NCCL); they start at once, each direction on its
 *   own thread in posting order, and queue a wait on the stream: an event recorded after them
 *   is ready only once they are done. Each transfer is framed with its length; a receive of
 *   another length is an error (ncclInvalidUsage), a peer gone is ncclRemoteError. A failed
 *   transfer never completes (as on a GPU): the error shows in ncclCommGetAsyncError.
 * - Groups change nothing (every transfer runs on its own already). ncclCommAbort and
 *   ncclCommDestroy shut the socket and join the threads.
 */
#include <errno.h>
#include <stddef.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes" /* nccl.h: ncclGroupStart(); */
#include <nccl.h>
#pragma GCC diagnostic pop

#include "sim_int.h"

#define SIM_MAGIC "rdag-sim-nccl"
#define SIM_MAX_LISTENERS 64

struct sim_xfer {
	struct sim_wait w;      /* first: freed through it */
	struct sim_xfer *next;
	void *bytes;
	size_t len;
};

struct sim_queue {
	struct sim_xfer *head, *tail;
};

struct ncclComm {
	int fd;                 /* -1 until connected */
	int lfd;                /* rank 0's listener while it joins, or -1 */
	int rank;
	int device;
	int nonblocking;
	char name[sizeof(((ncclUniqueId *)0)->internal)];
	atomic_int joining;     /* a non-blocking join runs */
	int join_started, threads_started;
	pthread_t join_thr;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct sim_queue tx, rx;
	int stop;
	atomic_int error;       /* ncclResult_t */
	pthread_t tx_thr, rx_thr;
};

static pthread_mutex_t id_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	char name[64];
	int fd;
} listeners[SIM_MAX_LISTENERS];
static unsigned long id_seq;
static _Thread_local int group_nonblocking; /* a group touched a non-blocking communicator */

ncclResult_t ncclGetVersion(int *v)
{
	*v = NCCL_VERSION_CODE;
	return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r)
{
	switch (r) {
	case ncclSuccess: return "no error";
	case ncclUnhandledCudaError: return "unhandled cuda error (simulated NCCL)";
	case ncclSystemError: return "unhandled system error (simulated NCCL)";
	case ncclInternalError: return "internal error (simulated NCCL)";
	case ncclInvalidArgument: return "invalid argument (simulated NCCL)";
	case ncclInvalidUsage: return "invalid usage (simulated NCCL)";
	case ncclRemoteError: return "remote process exited or there was a network error "
				     "(simulated NCCL)";
	case ncclInProgress: return "NCCL operation in progress";
	default: return "unknown result code (simulated NCCL)";
	}
}

static socklen_t sock_addr(const char *name, struct sockaddr_un *sa)
{
	size_t n = strlen(name);

	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path + 1, name, n); /* abstract: a leading NUL, nothing in the filesystem */
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
	struct sockaddr_un sa;
	char name[64];
	socklen_t sl;
	int fd, slot = -1;

	pthread_mutex_lock(&id_lock);
	for (int i = 0; i < SIM_MAX_LISTENERS; i++)
		if (!listeners[i].name[0]) {
			slot = i;
			break;
		}
	snprintf(name, sizeof(name), "%s-%ld-%lu", SIM_MAGIC, (long)getpid(), ++id_seq);
	if (slot < 0) {
		pthread_mutex_unlock(&id_lock);
		return ncclInternalError;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	sl = sock_addr(name, &sa);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sl) || listen(fd, 1)) {
		if (fd >= 0)
			close(fd);
		pthread_mutex_unlock(&id_lock);
		return ncclSystemError;
	}
	snprintf(listeners[slot].name, sizeof(listeners[slot].name), "%s", name);
	listeners[slot].fd = fd;
	pthread_mutex_unlock(&id_lock);
	memset(id, 0, sizeof(*id));
	snprintf(id->internal, sizeof(id->internal), "%s", name);
	return ncclSuccess;
}

/* The listening socket of an id this process made (taken out of the table), or -1. */
static int take_listener(const char *name)
{
	int fd = -1;

	pthread_mutex_lock(&id_lock);
	for (int i = 0; i < SIM_MAX_LISTENERS; i++)
		if (listeners[i].name[0] && !strcmp(listeners[i].name, name)) {
			fd = listeners[i].fd;
			listeners[i].name[0] = 0;
			break;
		}
	pthread_mutex_unlock(&id_lock);
	return fd;
}

static int io_all(int fd, void *p, size_t n, int out)
{
	uint8_t *b = p;

	while (n) {
		ssize_t k = out ? send(fd, b, n, MSG_NOSIGNAL) : recv(fd, b, n, 0);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		b += k;
		n -= (size_t)k;
	}
	return 0;
}

/* The next transfer of q, or NULL once the communicator stops. */
static struct sim_xfer *next_xfer(struct ncclComm *c, struct sim_queue *q)
{
	struct sim_xfer *x;

	pthread_mutex_lock(&c->lock);
	while (!c->stop && !q->head)
		pthread_cond_wait(&c->cond, &c->lock);
	x = c->stop ? NULL : q->head;
	if (x) {
		q->head = x->next;
		if (!q->head)
			q->tail = NULL;
	}
	pthread_mutex_unlock(&c->lock);
	return x;
}

static void fail(struct ncclComm *c, ncclResult_t r)
{
	int ok = ncclSuccess;

	atomic_compare_exchange_strong(&c->error, &ok, (int)r);
}

static void *tx_main(void *arg)
{
	struct ncclComm *c = arg;
	struct sim_xfer *x;

	while ((x = next_xfer(c, &c->tx))) {
		uint64_t len = x->len;

		if (atomic_load(&c->error) == ncclSuccess &&
		    (io_all(c->fd, &len, sizeof(len), 1) || io_all(c->fd, x->bytes, x->len, 1)))
			fail(c, ncclRemoteError);
		if (atomic_load(&c->error) == ncclSuccess)
			atomic_store(&x->w.done, 1);
		sim_wait_put(&x->w);
	}
	return NULL;
}

static void *rx_main(void *arg)
{
	struct ncclComm *c = arg;
	struct sim_xfer *x;

	while ((x = next_xfer(c, &c->rx))) {
		uint64_t len;

		if (atomic_load(&c->error) == ncclSuccess) {
			if (io_all(c->fd, &len, sizeof(len), 0))
				fail(c, ncclRemoteError);
			else if (len != x->len)
				fail(c, ncclInvalidUsage); /* the peer sent another size than posted */
			else if (io_all(c->fd, x->bytes, x->len, 0))
				fail(c, ncclRemoteError);
		}
		if (atomic_load(&c->error) == ncclSuccess)
			atomic_store(&x->w.done, 1);
		sim_wait_put(&x->w);
	}
	return NULL;
}

static void drop_queue(struct sim_queue *q)
{
	while (q->head) {
		struct sim_xfer *x = q->head;

		q->head = x->next;
		sim_wait_put(&x->w);
	}
	q->tail = NULL;
}

static void comm_end(struct ncclComm *c)
{
	pthread_mutex_lock(&c->lock);
	c->stop = 1;
	pthread_cond_broadcast(&c->cond);
	if (c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR); /* a thread inside send or recv returns */
	pthread_mutex_unlock(&c->lock);
	if (c->join_started)
		pthread_join(c->join_thr, NULL);
	if (c->threads_started) {
		pthread_join(c->tx_thr, NULL);
		pthread_join(c->rx_thr, NULL);
	}
	if (c->fd >= 0)
		close(c->fd);
	if (c->lfd >= 0)
		close(c->lfd);
	drop_queue(&c->tx);
	drop_queue(&c->rx);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

static int stopped(struct ncclComm *c)
{
	int stop;

	pthread_mutex_lock(&c->lock);
	stop = c->stop;
	pthread_mutex_unlock(&c->lock);
	return stop;
}

/* Connects c to its peer and starts its transfer threads. */
static ncclResult_t join(struct ncclComm *c)
{
	int fd = -1, peer = -1;

	if (getenv("SIM_NCCL_STALL_JOIN") && !strcmp(getenv("SIM_NCCL_STALL_JOIN"), "1")) {
		pthread_mutex_lock(&c->lock);
		while (!c->stop) /* a blocking join: for ever */
			pthread_cond_wait(&c->cond, &c->lock);
		pthread_mutex_unlock(&c->lock);
		return ncclSystemError;
	}
	if (c->rank == 0) {
		const char *t = getenv("SIM_NCCL_TIMEOUT_MS");
		int left = t && t[0] ? atoi(t) : 60000;
		struct pollfd pf = {.fd = c->lfd, .events = POLLIN};

		/* In steps, so that an abort ends the wait. */
		while (left > 0 && !stopped(c)) {
			int n = poll(&pf, 1, left < 50 ? left : 50);

			if (n == 1) {
				fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC);
				break;
			}
			if (n < 0 && errno != EINTR)
				break;
			left -= 50;
		}
	} else {
		struct sockaddr_un sa;
		socklen_t sl = sock_addr(c->name, &sa);

		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sl)) {
			close(fd);
			fd = -1;
		}
	}
	if (fd < 0)
		return ncclSystemError;
	pthread_mutex_lock(&c->lock);
	c->fd = fd;
	if (c->stop)
		shutdown(fd, SHUT_RDWR);
	pthread_mutex_unlock(&c->lock);
	if (io_all(fd, &c->rank, sizeof(c->rank), 1) || io_all(fd, &peer, sizeof(peer), 0) ||
	    peer != 1 - c->rank)
		return ncclRemoteError;
	if (pthread_create(&c->tx_thr, NULL, tx_main, c))
		return ncclSystemError;
	if (pthread_create(&c->rx_thr, NULL, rx_main, c)) {
		pthread_mutex_lock(&c->lock);
		c->stop = 1;
		pthread_cond_broadcast(&c->cond);
		pthread_mutex_unlock(&c->lock);
		pthread_join(c->tx_thr, NULL);
		return ncclSystemError;
	}
	c->threads_started = 1;
	return ncclSuccess;
}

static void *join_main(void *arg)
{
	struct ncclComm *c = arg;
	ncclResult_t r = join(c);

	if (r != ncclSuccess)
		fail(c, r);
	atomic_store(&c->joining, 0);
	return NULL;
}

/* A communicator of two ranks to join, or NULL with *r set. */
static struct ncclComm *comm_new(int nranks, const ncclUniqueId *id, int rank, ncclResult_t *r)
{
	struct ncclComm *c;

	*r = ncclInvalidArgument;
	if (nranks != 2 || (rank != 0 && rank != 1))
		return NULL; /* this simulation knows pairs only */
	if (strncmp(id->internal, SIM_MAGIC, strlen(SIM_MAGIC)) ||
	    !memchr(id->internal, 0, sizeof(id->internal)))
		return NULL;
	*r = ncclUnhandledCudaError;
	if (sim_current_device() < 0)
		return NULL;
	*r = ncclSystemError;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->fd = -1;
	c->lfd = -1;
	c->rank = rank;
	c->device = sim_current_device();
	memcpy(c->name, id->internal, sizeof(c->name));
	if (rank == 0 && (c->lfd = take_listener(id->internal)) < 0) {
		free(c);
		*r = ncclInvalidUsage; /* rank 0 must be the process that made the id */
		return NULL;
	}
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	*r = ncclSuccess;
	return c;
}

ncclResult_t ncclCommInitRank(ncclComm_t *out, int nranks, ncclUniqueId id, int rank)
{
	ncclResult_t r;
	struct ncclComm *c;

	*out = NULL;
	c = comm_new(nranks, &id, rank, &r);
	if (!c)
		return r;
	r = join(c);
	if (r != ncclSuccess) {
		comm_end(c);
		return r;
	}
	*out = c;
	return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *out, int nranks, ncclUniqueId id, int rank,
				    ncclConfig_t *config)
{
	ncclResult_t r;
	struct ncclComm *c;

	if (!config || config->magic != 0xcafebeef ||
	    config->size < offsetof(ncclConfig_t, blocking) + sizeof(int))
		return ncclInvalidArgument;
	if (config->blocking != 0)
		return ncclCommInitRank(out, nranks, id, rank);
	*out = NULL;
	c = comm_new(nranks, &id, rank, &r);
	if (!c)
		return r;
	c->nonblocking = 1;
	atomic_store(&c->joining, 1);
	if (pthread_create(&c->join_thr, NULL, join_main, c)) {
		comm_end(c);
		return ncclSystemError;
	}
	c->join_started = 1;
	*out = c;
	return ncclInProgress;
}

ncclResult_t ncclCommDestroy(ncclComm_t c)
{
	if (!c)
		return ncclInvalidArgument;
	comm_end(c);
	return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t c)
{
	return ncclCommDestroy(c);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *r)
{
	if (!c || !r)
		return ncclInvalidArgument;
	*r = atomic_load(&c->joining) ? ncclInProgress : (ncclResult_t)atomic_load(&c->error);
	return ncclSuccess;
}

static size_t type_size(ncclDataType_t t)
{
	switch (t) {
	case ncclInt8: case ncclUint8: return 1;
	case ncclFloat16: case ncclBfloat16: return 2;
	case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
	case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
	default: return 0;
	}
}

static ncclResult_t post(const void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t c,
			 cudaStream_t stream, int out)
{
	size_t len = count * type_size(t);
	struct sim_xfer *x;
	struct sim_queue *q;
	int device = -1;
	void *bytes;

	if (!c || !stream || !type_size(t) || peer != 1 - c->rank)
		return ncclInvalidArgument;
	if (atomic_load(&c->joining))
		return ncclInvalidUsage; /* rdag never posts before the join ended */
	group_nonblocking |= c->nonblocking;
	if (atomic_load(&c->error) != ncclSuccess)
		return (ncclResult_t)atomic_load(&c->error);
	if (!count)
		return ncclSuccess;
	bytes = sim_dev_bytes((CUdeviceptr)(uintptr_t)buf, len, &device);
	if (!bytes || device != c->device)
		return ncclInvalidArgument; /* not device memory of the communicator's device */
	x = calloc(1, sizeof(*x));
	if (!x)
		return ncclSystemError;
	x->bytes = bytes;
	x->len = len;
	atomic_init(&x->w.refs, 2);
	if (sim_stream_push_wait((CUstream)stream, &x->w) != CUDA_SUCCESS) {
		free(x);
		return ncclUnhandledCudaError;
	}
	q = out ? &c->tx : &c->rx;
	pthread_mutex_lock(&c->lock);
	if (q->tail)
		q->tail->next = x;
	else
		q->head = x;
	q->tail = x;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return ncclSuccess;
}

ncclResult_t ncclSend(const void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t c,
		      cudaStream_t stream)
{
	return post(buf, count, t, peer, c, stream, 1);
}

ncclResult_t ncclRecv(void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t c,
		      cudaStream_t stream)
{
	return post(buf, count, t, peer, c, stream, 0);
}

ncclResult_t ncclGroupStart(void)
{
	group_nonblocking = 0;
	return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void)
{
	int nb = group_nonblocking;

	group_nonblocking = 0;
	return nb ? ncclInProgress : ncclSuccess;
}
