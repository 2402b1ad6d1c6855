// SPDX-License-Identifier: GPL-2.0-only
/*
 * mdpy-fb: a Linux framebuffer driver for mdpy, the simple display this project serves over
 * vfio-user (PCI 1b36:000f).
 *
 * What the device offers (docs/device-specs.md of the project, mdpy/src/mode.rs):
 *   - config space: a read-only vendor-specific capability at 0x40 holding the mode,
 *     format (a DRM fourcc) at 0x44, width at 0x48, height at 0x4c, all little-endian u32;
 *   - BAR0: the framebuffer, linear, width * 4 bytes per line, rounded up to a power of two;
 *   - the only format is XRGB8888; there are no registers, no interrupts and no mode setting.
 *
 * So the driver reads the mode once at probe, checks that it describes a picture that fits
 * inside BAR0, maps exactly those bytes write-combined and registers an fbdev with that fixed
 * mode. fbcon then takes it like any other framebuffer. Drawing uses the generic helpers for
 * framebuffers in I/O memory.
 */

#include <linux/fb.h>
#include <linux/io.h>
#include <linux/module.h>
#include <linux/pci.h>

#define MDPY_DRIVER_NAME	"mdpy-fb"

/* PCI identity (Red Hat / QEMU vendor id, the id reserved for mdpy). */
#define MDPY_VENDOR_ID		0x1b36
#define MDPY_DEVICE_ID		0x000f

/* The mode capability and its fields in config space. */
#define MDPY_MODE_CAP		0x40
#define MDPY_MODE_CAP_LEN	0x10
#define MDPY_MODE_FORMAT	0x44
#define MDPY_MODE_WIDTH		0x48
#define MDPY_MODE_HEIGHT	0x4c

/* DRM fourcc "XR24": 32 bits per pixel, x:R:G:B 8:8:8:8, little-endian. */
#define MDPY_FORMAT_XRGB8888	0x34325258
#define MDPY_BYTES_PER_PIXEL	4

/* Largest side accepted; fbdev and fbcon keep sizes in u32 and int. */
#define MDPY_MAX_SIDE		16384

/* fbcon draws with 16 colours; truecolour fbdevs keep their pixel values here. */
#define MDPY_PALETTE_SIZE	16

struct mdpy_fb_par {
	u32 palette[MDPY_PALETTE_SIZE];
};

struct mdpy_mode {
	u32 format;
	u32 width;
	u32 height;
};

/* fbcon's colour map: 16-bit channels in, pixel values for XRGB8888 out. */
static int mdpy_fb_setcolreg(unsigned int regno, unsigned int red, unsigned int green,
			     unsigned int blue, unsigned int transp, struct fb_info *info)
{
	u32 *palette = info->pseudo_palette;

	if (regno >= MDPY_PALETTE_SIZE)
		return -EINVAL;
	palette[regno] = ((red >> 8) << info->var.red.offset) |
			 ((green >> 8) << info->var.green.offset) |
			 ((blue >> 8) << info->var.blue.offset);
	return 0;
}

/* The last user of the fbdev is gone (after unregister_framebuffer): free what it used. */
static void mdpy_fb_destroy(struct fb_info *info)
{
	iounmap(info->screen_base);
	fb_dealloc_cmap(&info->cmap);
	framebuffer_release(info);
}

/*
 * No .fb_check_var or .fb_set_par: the mode is the device's and cannot change, so the fbdev
 * core answers every mode request with the current mode.
 */
static const struct fb_ops mdpy_fb_ops = {
	.owner		= THIS_MODULE,
	FB_DEFAULT_IOMEM_OPS,
	.fb_setcolreg	= mdpy_fb_setcolreg,
	.fb_destroy	= mdpy_fb_destroy,
};

/*
 * Reads the mode the device reports and checks it against BAR0. On success *size is the
 * number of framebuffer bytes the mode needs; every refusal is logged with its reason.
 */
static int mdpy_read_mode(struct pci_dev *pdev, struct mdpy_mode *mode, u64 *size)
{
	u64 bar_len = pci_resource_len(pdev, 0);
	u8 cap = pci_find_capability(pdev, PCI_CAP_ID_VNDR);
	u8 cap_len = 0;

	if (cap == MDPY_MODE_CAP)
		pci_read_config_byte(pdev, cap + PCI_CAP_FLAGS, &cap_len);
	if (cap != MDPY_MODE_CAP || cap_len < MDPY_MODE_CAP_LEN) {
		pci_err(pdev, "no mode capability at %#x (vendor capability at %#x, length %u); not binding\n",
			MDPY_MODE_CAP, cap, cap_len);
		return -ENODEV;
	}

	pci_read_config_dword(pdev, MDPY_MODE_FORMAT, &mode->format);
	pci_read_config_dword(pdev, MDPY_MODE_WIDTH, &mode->width);
	pci_read_config_dword(pdev, MDPY_MODE_HEIGHT, &mode->height);

	if (mode->format != MDPY_FORMAT_XRGB8888) {
		pci_err(pdev, "format %p4cc is not XRGB8888; not binding\n", &mode->format);
		return -EINVAL;
	}
	if (!mode->width || !mode->height ||
	    mode->width > MDPY_MAX_SIDE || mode->height > MDPY_MAX_SIDE) {
		pci_err(pdev, "mode %ux%u out of range (1..%u per side); not binding\n",
			mode->width, mode->height, MDPY_MAX_SIDE);
		return -EINVAL;
	}
	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM)) {
		pci_err(pdev, "BAR0 is not a memory BAR; not binding\n");
		return -ENODEV;
	}

	/* Both sides are at most 2^14, so the product cannot overflow 64 bits. */
	*size = (u64)mode->width * mode->height * MDPY_BYTES_PER_PIXEL;
	if (*size > bar_len) {
		pci_err(pdev, "mode %ux%u XRGB8888 needs %llu bytes but BAR0 has only %llu: refusing to map past BAR0\n",
			mode->width, mode->height, *size, bar_len);
		return -EINVAL;
	}
	return 0;
}

static int mdpy_fb_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct mdpy_fb_par *par;
	struct mdpy_mode mode;
	struct fb_info *info;
	u64 size;
	int ret;

	ret = mdpy_read_mode(pdev, &mode, &size);
	if (ret)
		return ret;

	ret = pci_enable_device(pdev);
	if (ret) {
		pci_err(pdev, "cannot enable the device: %d\n", ret);
		return ret;
	}
	ret = pci_request_region(pdev, 0, MDPY_DRIVER_NAME);
	if (ret) {
		pci_err(pdev, "BAR0 is busy: %d\n", ret);
		goto err_disable;
	}

	info = framebuffer_alloc(sizeof(*par), &pdev->dev);
	if (!info) {
		ret = -ENOMEM;
		goto err_release;
	}
	par = info->par;

	info->fix.smem_start = pci_resource_start(pdev, 0);
	info->fix.smem_len = size;
	info->screen_base = ioremap_wc(info->fix.smem_start, size);
	if (!info->screen_base) {
		pci_err(pdev, "cannot map %llu bytes of BAR0\n", size);
		ret = -ENOMEM;
		goto err_free;
	}
	info->screen_size = size;

	strscpy(info->fix.id, "mdpy", sizeof(info->fix.id));
	info->fix.type = FB_TYPE_PACKED_PIXELS;
	info->fix.visual = FB_VISUAL_TRUECOLOR;
	info->fix.line_length = mode.width * MDPY_BYTES_PER_PIXEL;
	info->fix.accel = FB_ACCEL_NONE;

	info->var.xres = mode.width;
	info->var.yres = mode.height;
	info->var.xres_virtual = mode.width;
	info->var.yres_virtual = mode.height;
	info->var.bits_per_pixel = MDPY_BYTES_PER_PIXEL * 8;
	info->var.red.offset = 16;
	info->var.red.length = 8;
	info->var.green.offset = 8;
	info->var.green.length = 8;
	info->var.blue.offset = 0;
	info->var.blue.length = 8;
	info->var.activate = FB_ACTIVATE_NOW;
	info->var.height = -1;
	info->var.width = -1;
	info->var.vmode = FB_VMODE_NONINTERLACED;

	info->fbops = &mdpy_fb_ops;
	info->pseudo_palette = par->palette;

	ret = fb_alloc_cmap(&info->cmap, MDPY_PALETTE_SIZE, 0);
	if (ret)
		goto err_unmap;

	ret = register_framebuffer(info);
	if (ret) {
		pci_err(pdev, "cannot register the framebuffer: %d\n", ret);
		goto err_cmap;
	}
	pci_set_drvdata(pdev, info);
	pci_info(pdev, "fb%d: %ux%u XRGB8888, %llu of %llu bytes of BAR0\n",
		 info->node, mode.width, mode.height, size,
		 (u64)pci_resource_len(pdev, 0));
	return 0;

err_cmap:
	fb_dealloc_cmap(&info->cmap);
err_unmap:
	iounmap(info->screen_base);
err_free:
	framebuffer_release(info);
err_release:
	pci_release_region(pdev, 0);
err_disable:
	pci_disable_device(pdev);
	return ret;
}

static void mdpy_fb_remove(struct pci_dev *pdev)
{
	struct fb_info *info = pci_get_drvdata(pdev);

	/* fbcon lets go here; the mapping itself goes in mdpy_fb_destroy, with the last user. */
	unregister_framebuffer(info);
	pci_release_region(pdev, 0);
	pci_disable_device(pdev);
}

static const struct pci_device_id mdpy_fb_ids[] = {
	{ PCI_DEVICE(MDPY_VENDOR_ID, MDPY_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, mdpy_fb_ids);

static struct pci_driver mdpy_fb_driver = {
	.name		= MDPY_DRIVER_NAME,
	.id_table	= mdpy_fb_ids,
	.probe		= mdpy_fb_probe,
	.remove		= mdpy_fb_remove,
};
module_pci_driver(mdpy_fb_driver);

MODULE_DESCRIPTION("Framebuffer for the mdpy simple display served over vfio-user");
MODULE_LICENSE("GPL");
