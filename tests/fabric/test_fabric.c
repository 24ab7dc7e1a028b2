/* Unit tests of the fabric core: options from the environment, selection, capability checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fabric/fabric.h"
#include "fabric/ofi/ofi.h"

static void clear_env(void)
{
	unsetenv("RDAG_FABRIC");
	unsetenv("RDAG_OFI_PROVIDER");
	unsetenv("RDAG_IB_DEVICE");
	unsetenv("RDAG_IB_GID_INDEX");
	unsetenv("RDAG_IB_ADDR");
	unsetenv("RDAG_OFI_WAIT");
}

static void test_opts_defaults(void **state)
{
	struct fab_open_opts o;

	(void)state;
	clear_env();
	fab_opts_from_env(&o);
	assert_string_equal(o.provider, "auto");
	assert_null(o.ofi_provider);
	assert_null(o.ib_device);
	assert_null(o.iface_addr);
	assert_int_equal(o.ib_gid_index, -1);
	assert_int_equal(o.local_only, 0);
	assert_int_equal(o.ofi_wait, FAB_WAIT_AUTO);
	assert_int_equal(o.poll_only, 0);
}

static void test_opts_from_env(void **state)
{
	struct fab_open_opts o;

	(void)state;
	clear_env();
	setenv("RDAG_FABRIC", "verbs", 1);
	setenv("RDAG_OFI_PROVIDER", "tcp;ofi_rxm", 1);
	setenv("RDAG_IB_DEVICE", "rxe0", 1);
	setenv("RDAG_IB_GID_INDEX", "1", 1);
	setenv("RDAG_IB_ADDR", "192.0.2.1", 1);
	fab_opts_from_env(&o);
	assert_string_equal(o.provider, "verbs");
	assert_string_equal(o.ofi_provider, "tcp;ofi_rxm");
	assert_string_equal(o.ib_device, "rxe0");
	assert_int_equal(o.ib_gid_index, 1);
	assert_string_equal(o.iface_addr, "192.0.2.1");

	/* Unknown values: warned about, defaults used. */
	setenv("RDAG_FABRIC", "infiniband", 1);
	setenv("RDAG_IB_GID_INDEX", "one", 1);
	fab_opts_from_env(&o);
	assert_string_equal(o.provider, "auto");
	assert_int_equal(o.ib_gid_index, -1);
	setenv("RDAG_IB_GID_INDEX", "300", 1);
	fab_opts_from_env(&o);
	assert_int_equal(o.ib_gid_index, -1);

	/* RDAG_OFI_WAIT: auto, fd or none (any case); anything else is auto. */
	setenv("RDAG_OFI_WAIT", "none", 1);
	fab_opts_from_env(&o);
	assert_int_equal(o.ofi_wait, FAB_WAIT_NONE);
	setenv("RDAG_OFI_WAIT", "FD", 1);
	fab_opts_from_env(&o);
	assert_int_equal(o.ofi_wait, FAB_WAIT_FD);
	setenv("RDAG_OFI_WAIT", "auto", 1);
	fab_opts_from_env(&o);
	assert_int_equal(o.ofi_wait, FAB_WAIT_AUTO);
	setenv("RDAG_OFI_WAIT", "sometimes", 1);
	fab_opts_from_env(&o);
	assert_int_equal(o.ofi_wait, FAB_WAIT_AUTO);
	clear_env();
}

static void test_select_unknown(void **state)
{
	struct fab_open_opts o;
	const struct fab_ops *ops = (const void *)1;
	char why[512];

	(void)state;
	clear_env();
	fab_opts_from_env(&o);
	o.provider = "carrier-pigeon";
	assert_int_equal(fab_select(&o, &ops, why, sizeof(why)), RDAG_EINVAL);
	assert_null(ops);
	assert_non_null(strstr(why, "carrier-pigeon"));
	assert_non_null(strstr(rdag_last_error(), "carrier-pigeon"));
}

static void test_select_ofi_named(void **state)
{
	struct fab_open_opts o;
	const struct fab_ops *ops = NULL;
	char why[512];

	(void)state;
	clear_env();
	fab_opts_from_env(&o);
	o.provider = "ofi";
	o.ofi_provider = "shm";
	assert_int_equal(fab_select(&o, &ops, why, sizeof(why)), 0);
	assert_ptr_equal(ops, &fab_ofi_ops);
	assert_non_null(strstr(why, "'shm'"));

	/* auto with RDAG_OFI_PROVIDER set means ofi. */
	o.provider = "auto";
	o.ofi_provider = "tcp;ofi_rxm";
	assert_int_equal(fab_select(&o, &ops, why, sizeof(why)), 0);
	assert_ptr_equal(ops, &fab_ofi_ops);
	assert_non_null(strstr(why, "tcp;ofi_rxm"));
	assert_non_null(strstr(why, "RDAG_OFI_PROVIDER"));
}

static void test_select_ofi_missing(void **state)
{
	struct fab_open_opts o;
	const struct fab_ops *ops = NULL;
	struct fab_ep *ep = (void *)1;
	char why[512];

	(void)state;
	clear_env();
	fab_opts_from_env(&o);
	o.provider = "ofi";
	o.ofi_provider = "no-such-provider";
	assert_int_equal(fab_select(&o, &ops, why, sizeof(why)), RDAG_ENODEV);
	assert_null(ops);
	assert_non_null(strstr(why, "no-such-provider"));
	assert_int_equal(fab_open(&o, &ep), RDAG_ENODEV);
	assert_null(ep);
	assert_non_null(strstr(rdag_last_error(), "no-such-provider"));
}

static void test_select_auto(void **state)
{
	struct fab_open_opts o;
	const struct fab_ops *ops = NULL;
	char why[600];
	int rc;

	(void)state;
	clear_env();
	fab_opts_from_env(&o);
	o.local_only = 1;
	rc = fab_select(&o, &ops, why, sizeof(why));
	assert_int_equal(rc, 0);
	assert_non_null(ops);
	if (ops == &fab_ofi_ops) {
		/* No usable verbs device here: the reason is given, and shm leads for local jobs. */
		assert_non_null(strstr(why, "verbs not usable"));
		assert_non_null(strstr(why, "'shm'"));
	}
	o.local_only = 0;
	rc = fab_select(&o, &ops, why, sizeof(why));
	assert_int_equal(rc, 0);
	if (ops == &fab_ofi_ops)
		assert_null(strstr(why, "'shm'"));
}

static void test_select_verbs_here(void **state)
{
	struct fab_open_opts o;
	const struct fab_ops *ops = NULL;
	char why[512];
	int rc;

	(void)state;
	clear_env();
	fab_opts_from_env(&o);
	o.provider = "verbs";
	rc = fab_select(&o, &ops, why, sizeof(why));
	if (getenv("RDMA_VM")) {
		skip(); /* inside the Soft-RoCE VM verbs may well be usable */
	}
	/* This host has no RDMA device (or this build no verbs provider): refused, with a reason. */
	assert_int_equal(rc, RDAG_ENODEV);
	assert_null(ops);
	assert_true(strlen(why) > strlen("verbs (RDAG_FABRIC=verbs): "));
}

static struct fi_info *good_info(void)
{
	struct fi_info *i = fi_allocinfo();

	assert_non_null(i);
	i->ep_attr->type = FI_EP_RDM;
	i->caps = OFI_CAPS;
	i->domain_attr->cq_data_size = 8;
	i->tx_attr->msg_order = FI_ORDER_SAS;
	i->rx_attr->msg_order = FI_ORDER_SAS;
	i->fabric_attr->prov_name = strdup("fake");
	return i;
}

static void test_check_info(void **state)
{
	struct fi_info *i;
	char why[512];

	(void)state;
	i = good_info();
	assert_int_equal(ofi_check_info(i, why, sizeof(why)), 0);
	assert_string_equal(why, "");
	assert_int_equal(ofi_caps_of(i) & FAB_CAP_IMM_CONSUMES_RECV, 0);
	i->mode = FI_RX_CQ_DATA | FI_CONTEXT;
	assert_int_equal(ofi_check_info(i, why, sizeof(why)), 0);
	assert_true(ofi_caps_of(i) & FAB_CAP_IMM_CONSUMES_RECV);
	assert_true(ofi_caps_of(i) & FAB_CAP_WRITE_IMM);
	/* Without send-after-write ordering, writes complete at delivery; with it, they need not. */
	assert_int_equal(ofi_caps_of(i) & FAB_CAP_ORDER_SAW, 0);
	assert_true(ofi_caps_of(i) & FAB_CAP_WRITE_DELIVERED);
	i->tx_attr->msg_order |= FI_ORDER_SAW;
	assert_int_equal(ofi_caps_of(i) & FAB_CAP_ORDER_SAW, 0); /* both sides must order */
	i->rx_attr->msg_order |= FI_ORDER_SAW;
	assert_true(ofi_caps_of(i) & FAB_CAP_ORDER_SAW);
	assert_int_equal(ofi_caps_of(i) & FAB_CAP_WRITE_DELIVERED, 0);

	/* A MSG-only core provider: named, with the layering hint. */
	i->ep_attr->type = FI_EP_MSG;
	assert_int_equal(ofi_check_info(i, why, sizeof(why)), RDAG_ENODEV);
	assert_non_null(strstr(why, "FI_EP_RDM"));
	assert_non_null(strstr(why, "fake;ofi_rxm"));
	i->ep_attr->type = FI_EP_RDM;

	/* Every missing piece is named. */
	i->caps = FI_MSG | FI_SEND | FI_RECV;
	i->domain_attr->cq_data_size = 0;
	i->domain_attr->mr_mode = FI_MR_RAW | FI_MR_VIRT_ADDR;
	i->mode = FI_MSG_PREFIX;
	i->tx_attr->msg_order = 0;
	assert_int_equal(ofi_check_info(i, why, sizeof(why)), RDAG_ENODEV);
	assert_non_null(strstr(why, "RDMA write"));
	assert_non_null(strstr(why, "remote CQ data"));
	assert_non_null(strstr(why, "FI_MR_RAW"));
	assert_non_null(strstr(why, "FI_MSG_PREFIX"));
	assert_non_null(strstr(why, "FI_ORDER_SAS"));
	assert_null(strstr(why, "FI_EP_RDM"));

	/* MR bits we do not honour are named too. */
	fi_freeinfo(i);
	i = good_info();
	i->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_MMU_NOTIFY;
	assert_int_equal(ofi_check_info(i, why, sizeof(why)), RDAG_ENODEV);
	assert_non_null(strstr(why, "FI_MR_MMU_NOTIFY"));
	fi_freeinfo(i);
}

static void test_universe_size(void **state)
{
	(void)state;
	unsetenv("FI_UNIVERSE_SIZE");
	ofi_set_universe(0);
	assert_null(getenv("FI_UNIVERSE_SIZE"));
	ofi_set_universe(4);
	assert_string_equal(getenv("FI_UNIVERSE_SIZE"), "4");
	ofi_set_universe(64); /* never overrides */
	assert_string_equal(getenv("FI_UNIVERSE_SIZE"), "4");
	unsetenv("FI_UNIVERSE_SIZE");
	ofi_set_universe(1);
	assert_string_equal(getenv("FI_UNIVERSE_SIZE"), "2");
	unsetenv("FI_UNIVERSE_SIZE");
}

static void test_status_map(void **state)
{
	(void)state;
	assert_int_equal(ofi_status(0), 0);
	assert_int_equal(ofi_status(FI_EAGAIN), RDAG_EAGAIN);
	assert_int_equal(ofi_status(FI_ETRUNC), RDAG_EOVERFLOW);
	assert_int_equal(ofi_status(FI_ECANCELED), RDAG_ECANCELED);
	assert_int_equal(ofi_status(FI_EKEYREJECTED), RDAG_EACCES);
	assert_int_equal(ofi_status(FI_ECONNRESET), RDAG_EPEER_DEAD);
	assert_int_equal(ofi_status(FI_EOTHER), RDAG_EIO);
}

/* One shm endpoint in this process: attributes, registration, refused posts, no wait fd. */
static void test_single_endpoint(void **state)
{
	struct fab_open_opts o;
	struct fab_ep *ep = NULL;
	const struct fab_attr *a;
	struct fab_mr mr;
	struct fab_cqe c;
	char buf[64], addr[256];
	size_t alen = 4;
	int ctx;

	(void)state;
	clear_env();
	fab_opts_from_env(&o);
	o.provider = "ofi";
	o.ofi_provider = "shm";
	o.world_size = 2;
	assert_int_equal(fab_open(&o, &ep), 0);
	a = fab_attr(ep);
	assert_string_equal(a->provider, "ofi");
	assert_string_equal(a->fabric_name, "shm");
	assert_true(a->caps & FAB_CAP_WRITE_IMM);
	assert_true(a->max_msg_size > 0 && a->max_write_size > 0 && a->max_recv_posted > 0);
	/* The address: too small a buffer says how much is needed. */
	assert_int_equal(fab_name(ep, addr, &alen), RDAG_ENOSPC);
	assert_int_equal(alen, a->addr_len);
	alen = sizeof(addr);
	assert_int_equal(fab_name(ep, addr, &alen), 0);
	assert_int_equal(fab_mr_reg(ep, buf, sizeof(buf), FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE,
				    &mr),
			 0);
	assert_ptr_equal(mr.addr, buf);
	assert_int_equal(mr.len, sizeof(buf));
	/* shm addresses by virtual address (FI_MR_VIRT_ADDR). */
	assert_int_equal(mr.remote_base, (uint64_t)(uintptr_t)buf);
	/* Nobody is connected: every post is refused, nothing completes. */
	assert_int_equal(fab_send(ep, 1, buf, 8, mr.desc, &ctx), RDAG_EINVAL);
	assert_int_equal(fab_write(ep, 1, buf, 8, mr.desc, 0, mr.rkey, 1, 7, &ctx), RDAG_EINVAL);
	assert_int_equal(fab_send(ep, 0, buf, 8, mr.desc, &ctx), RDAG_EINVAL); /* ourselves */
	assert_int_equal(fab_poll(ep, &c, 1), 0);
	assert_int_equal(fab_poll(ep, &c, 0), 0); /* progress only */
	assert_int_equal(fab_mr_reg_mem(ep, buf, 8, FAB_ACCESS_LOCAL, FAB_MEM_CUDA, 0, &mr),
			 RDAG_ENOSYS);
	/* shm's fd would not wake for a peer's message: not offered. */
	assert_int_equal(a->caps & FAB_CAP_WAIT_FD, 0);
	assert_int_equal(fab_wait_fd(ep), RDAG_ENOSYS);
	assert_int_equal(fab_arm(ep), RDAG_ENOSYS);
	/* A receive posted and never completed is released by close, as is the registration. */
	assert_int_equal(fab_post_recv(ep, buf, sizeof(buf), NULL, &ctx), 0);
	fab_close(ep);
}

/* Opens one endpoint on prov with the given wait mode; returns whether it offers a wait fd. */
static int wait_fd_of(const char *prov, int mode, int poll_only)
{
	struct fab_open_opts o;
	struct fab_ep *ep = NULL;
	int has, fd, arm;

	clear_env();
	fab_opts_from_env(&o);
	o.provider = "ofi";
	o.ofi_provider = prov;
	o.world_size = 2;
	o.ofi_wait = mode;
	o.poll_only = poll_only;
	assert_int_equal(fab_open(&o, &ep), 0);
	has = (fab_attr(ep)->caps & FAB_CAP_WAIT_FD) != 0;
	fd = fab_wait_fd(ep);
	arm = fab_arm(ep);
	if (has) {
		assert_true(fd >= 0);
		assert_true(arm == 0 || arm == RDAG_EAGAIN);
	} else {
		/* No wait object: both say so, and polling still works. */
		struct fab_cqe c;

		assert_int_equal(fd, RDAG_ENOSYS);
		assert_int_equal(arm, RDAG_ENOSYS);
		assert_non_null(strstr(rdag_last_error(), "no usable wait fd"));
		assert_int_equal(fab_poll(ep, &c, 1), 0);
	}
	fab_close(ep);
	return has;
}

/*
 * RDAG_OFI_WAIT on tcp;ofi_rxm: auto gives a wait fd unless the caller only busy-polls, fd
 * always, none never. shm never has one (its fd would not wake for a peer's message).
 */
static void test_ofi_wait_modes(void **state)
{
	(void)state;
	assert_int_equal(wait_fd_of("tcp;ofi_rxm", FAB_WAIT_AUTO, 0), 1);
	assert_int_equal(wait_fd_of("tcp;ofi_rxm", FAB_WAIT_AUTO, 1), 0);
	assert_int_equal(wait_fd_of("tcp;ofi_rxm", FAB_WAIT_FD, 1), 1);
	assert_int_equal(wait_fd_of("tcp;ofi_rxm", FAB_WAIT_NONE, 0), 0);
	assert_int_equal(wait_fd_of("shm", FAB_WAIT_FD, 0), 0);
	assert_int_equal(wait_fd_of("shm", FAB_WAIT_NONE, 1), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_opts_defaults),
		cmocka_unit_test(test_opts_from_env),
		cmocka_unit_test(test_select_unknown),
		cmocka_unit_test(test_select_ofi_named),
		cmocka_unit_test(test_select_ofi_missing),
		cmocka_unit_test(test_select_auto),
		cmocka_unit_test(test_select_verbs_here),
		cmocka_unit_test(test_check_info),
		cmocka_unit_test(test_universe_size),
		cmocka_unit_test(test_status_map),
		cmocka_unit_test(test_single_endpoint),
		cmocka_unit_test(test_ofi_wait_modes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
