// The Python extension module xclip_kernels._C. Importing it runs the static
// TORCH_LIBRARY registrations of this library; it exports no Python functions
// (everything is reached through torch.ops.xclip), so no pybind11 is needed.
#ifdef XCLIP_PYTHON_MODULE
#include <Python.h>

static struct PyModuleDef xclip_module = {
    PyModuleDef_HEAD_INIT, "_C", "CUDA kernels of xclip_kernels (reached through torch.ops.xclip)", -1, nullptr,
    nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&xclip_module); }
#endif
