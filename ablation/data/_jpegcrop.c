/* Decode only a region of a JPEG, optionally at 1/2, 1/4 or 1/8 scale (libjpeg-turbo).
 *
 * A random resized crop needs a part of the image: rows above it are skipped (entropy-decoded
 * only: jpeg_skip_scanlines), rows below it are never read, and columns outside it (rounded out to
 * the iMCU) are not transformed (jpeg_crop_scanline). Pixels inside the region are those of a full
 * decode. A truncated file is an error. The decode runs without the GIL.
 *
 * decode_region(data, scale_denom, x, y, width, height) -> (rgb bytearray, x_start, region_width)
 *   x, y, width, height: the region in scaled pixels; the rows returned are y .. y+height-1, the
 *   columns x_start .. x_start+region_width-1 (x_start <= x, region_width >= width + x - x_start).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

struct error_mgr {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct error_mgr *err = (struct error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    /* a truncated file is an error here; other warnings (extraneous bytes, ...) decode as libjpeg does */
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) on_error(cinfo);
}

/* Returns NULL on success, else the error message (in err). */
static const char *decode(const unsigned char *data, unsigned long size, int denom, JDIMENSION x, JDIMENSION y,
                          JDIMENSION width, JDIMENSION height, unsigned char **out, JDIMENSION *x_start,
                          JDIMENSION *region_width, struct error_mgr *err) {
    struct jpeg_decompress_struct cinfo;
    unsigned char *volatile buffer = NULL;
    cinfo.err = jpeg_std_error(&err->pub);
    err->pub.error_exit = on_error;
    err->pub.emit_message = on_message;
    if (setjmp(err->jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(buffer);
        return err->message;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, size);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = denom;
    jpeg_start_decompress(&cinfo);
    if (x + width > cinfo.output_width || y + height > cinfo.output_height || width == 0 || height == 0) {
        snprintf(err->message, sizeof err->message, "region %ux%u at (%u, %u) outside the %ux%u image",
                 width, height, x, y, cinfo.output_width, cinfo.output_height);
        jpeg_destroy_decompress(&cinfo);
        return err->message;
    }
    JDIMENSION xs = x, w = width;
    if (xs > 0 || w < cinfo.output_width) jpeg_crop_scanline(&cinfo, &xs, &w);
    if (y > 0) jpeg_skip_scanlines(&cinfo, y);
    size_t stride = (size_t)w * 3;
    buffer = malloc(stride * height);
    if (!buffer) {
        jpeg_destroy_decompress(&cinfo);
        return "out of memory";
    }
    for (JDIMENSION row = 0; row < height;) {
        JSAMPROW line = buffer + stride * row;
        row += jpeg_read_scanlines(&cinfo, &line, 1);
    }
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    *out = buffer;
    *x_start = xs;
    *region_width = w;
    return NULL;
}

static PyObject *decode_region(PyObject *self, PyObject *args) {
    Py_buffer data;
    int denom;
    unsigned int x, y, width, height;
    if (!PyArg_ParseTuple(args, "y*iIIII", &data, &denom, &x, &y, &width, &height)) return NULL;
    if (denom != 1 && denom != 2 && denom != 4 && denom != 8) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "scale_denom must be 1, 2, 4 or 8");
        return NULL;
    }
    struct error_mgr err;
    unsigned char *out = NULL;
    JDIMENSION xs = 0, w = 0;
    const char *failed;
    Py_BEGIN_ALLOW_THREADS
    failed = decode(data.buf, (unsigned long)data.len, denom, x, y, width, height, &out, &xs, &w, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (failed) {
        PyErr_SetString(PyExc_ValueError, failed);
        return NULL;
    }
    PyObject *pixels = PyByteArray_FromStringAndSize((const char *)out, (Py_ssize_t)w * 3 * height);
    free(out);
    if (!pixels) return NULL;
    return Py_BuildValue("(NII)", pixels, xs, w);
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS,
     "decode_region(data, scale_denom, x, y, width, height) -> (rgb bytearray, x_start, region_width)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop",
                                    "Region decoding of JPEGs with libjpeg-turbo.", -1, methods};

PyMODINIT_FUNC PyInit__jpegcrop(void) { return PyModule_Create(&module); }
