/* Unit tests of the verbs provider's probe and open: clear refusal without a device, success in the VM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <infiniband/verbs.h>

#include "fabric/fabric.h"

/*
 * Three worlds: no RDMA device at all (the project's hosts: ibv_get_device_list fails with
 * ENOSYS), the Soft-RoCE VM (RDMA_VM=1, rxe0 active with an IPv4 address), and anything else
 * (a host with real devices), where only device-independent checks run.
 */
enum world { NO_DEVICE, IN_VM, OTHER };

static enum world world(void)
{
	struct ibv_device **l;
	int n = 0;

	if (getenv("RDMA_VM") && getenv("RDMA_VM_IBDEV"))
		return IN_VM;
	l = ibv_get_device_list(&n);
	if (l)
		ibv_free_device_list(l);
	return !l || n == 0 ? NO_DEVICE : OTHER;
}

static void opts(struct fab_open_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->provider = "verbs";
	o->ib_gid_index = -1;
	o->world_size = 4;
}

static void probe_default(void **state)
{
	struct fab_open_opts o;
	struct fab_ep *ep = NULL;
	char why[512];
	int rc;

	(void)state;
	opts(&o);
	why[0] = 'x';
	why[1] = '\0';
	rc = fab_verbs_ops.probe(&o, why, sizeof(why));
	printf("probe: %d: %s\n", rc, why);
	switch (world()) {
	case NO_DEVICE:
		assert_int_equal(rc, RDAG_ENODEV);
		assert_non_null(strstr(why, "no RDMA device found (ibv_get_device_list: "));
		rc = fab_verbs_ops.open(&o, &ep);
		assert_int_equal(rc, RDAG_ENODEV);
		assert_null(ep);
		assert_non_null(strstr(rdag_last_error(), "verbs: no RDMA device found (ibv_get_device_list: "));
		break;
	case IN_VM:
		assert_int_equal(rc, 0);
		/* On success why names what would be used. */
		assert_non_null(strstr(why, getenv("RDMA_VM_IBDEV")));
		assert_non_null(strstr(why, "port 1"));
		/* Auto GID choice: the IPv4-mapped RoCE v2 entry, whose address is the VM's. */
		assert_non_null(strstr(why, "RoCE v2"));
		assert_non_null(strstr(why, getenv("RDMA_VM_IP")));
		break;
	case OTHER:
		skip();
	}
}

static void open_attrs(void **state)
{
	struct fab_open_opts o;
	const struct fab_attr *a;
	struct fab_ep *ep = NULL;
	uint8_t addr[64];
	size_t len = 4;
	int rc;

	(void)state;
	if (world() != IN_VM)
		skip();
	opts(&o);
	o.rx_depth = 300;
	o.tx_depth = 64;
	rc = fab_verbs_ops.open(&o, &ep);
	assert_int_equal(rc, 0);
	a = fab_attr(ep);
	assert_string_equal(a->provider, "verbs");
	assert_string_equal(a->fabric_name, getenv("RDMA_VM_IBDEV"));
	assert_int_equal(a->max_recv_posted, 300);
	assert_true(a->inject_size >= 32);
	assert_true(a->max_msg_size >= 4096);
	assert_true(a->max_write_size >= (size_t)64 << 20);
	assert_int_equal(a->caps & (FAB_CAP_WRITE_IMM | FAB_CAP_IMM_CONSUMES_RECV | FAB_CAP_RECV_SOURCE |
				    FAB_CAP_INJECT | FAB_CAP_WAIT_FD | FAB_CAP_ORDER_SAW |
				    FAB_CAP_WRITE_DELIVERED),
			 FAB_CAP_WRITE_IMM | FAB_CAP_IMM_CONSUMES_RECV | FAB_CAP_RECV_SOURCE | FAB_CAP_INJECT |
				 FAB_CAP_WAIT_FD | FAB_CAP_ORDER_SAW | FAB_CAP_WRITE_DELIVERED);
	/* Address: too small a buffer says how much is needed. */
	rc = fab_name(ep, addr, &len);
	assert_int_equal(rc, RDAG_ENOSPC);
	assert_int_equal(len, a->addr_len);
	rc = fab_name(ep, addr, &len);
	assert_int_equal(rc, 0);
	assert_true(fab_wait_fd(ep) >= 0);
	/* Nothing is connected yet: posting is refused, not a crash. */
	assert_int_equal(fab_send(ep, 1, "x", 1, NULL, NULL), RDAG_EINVAL);
	assert_int_equal(fab_arm(ep), 0);
	fab_close(ep);
}

/* Runs probe with o and expects refusal whose message contains want (in the VM). */
static void refused(struct fab_open_opts *o, int code, const char *want)
{
	char why[512];
	int rc;

	why[0] = '\0';
	rc = fab_verbs_ops.probe(o, why, sizeof(why));
	printf("probe: %d: %s\n", rc, why);
	assert_int_equal(rc, code);
	assert_non_null(strstr(why, want));
}

static void bad_choices(void **state)
{
	struct fab_open_opts o;
	enum world wd = world();

	(void)state;
	if (wd == OTHER)
		skip();
	opts(&o);
	o.ib_device = "nosuchdev0";
	if (wd == NO_DEVICE) {
		refused(&o, RDAG_ENODEV, "no RDMA device found (ibv_get_device_list: ");
		return;
	}
	refused(&o, RDAG_ENODEV, "'nosuchdev0' (RDAG_IB_DEVICE) not found; devices: rxe0");
	opts(&o);
	o.ib_device = "rxe0:2";
	refused(&o, RDAG_ENODEV, "rxe0 has no port 2");
	o.ib_device = "rxe0:x";
	refused(&o, RDAG_EINVAL, "port must be a number");
	opts(&o);
	o.ib_gid_index = 200;
	refused(&o, RDAG_ENODEV, "GID index 200 (RDAG_IB_GID_INDEX) is not in its GID table");
	opts(&o);
	o.iface_addr = "not-an-ip";
	refused(&o, RDAG_ENODEV, "RDAG_IB_ADDR='not-an-ip' is not a numeric");
	opts(&o);
	o.iface_addr = "198.51.100.7"; /* no interface has it */
	refused(&o, RDAG_ENODEV, "rdma_bind_addr(198.51.100.7)");
}

static void forced_gid(void **state)
{
	struct fab_open_opts o;
	char why[512];

	(void)state;
	if (world() != IN_VM)
		skip();
	/* Index 1 is the IPv4-mapped GID in the VM (README); forcing it gives the same choice. */
	opts(&o);
	o.ib_gid_index = 1;
	assert_int_equal(fab_verbs_ops.probe(&o, why, sizeof(why)), 0);
	printf("probe: %s\n", why);
	assert_non_null(strstr(why, "gid 1 (::ffff:"));
	/* An explicit address on the device's interface is taken as is. */
	opts(&o);
	o.iface_addr = getenv("RDMA_VM_IP");
	assert_int_equal(fab_verbs_ops.probe(&o, why, sizeof(why)), 0);
	assert_non_null(strstr(why, getenv("RDMA_VM_IP")));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(probe_default),
		cmocka_unit_test(open_attrs),
		cmocka_unit_test(bad_choices),
		cmocka_unit_test(forced_gid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
