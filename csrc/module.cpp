#include <algorithm>
#include <cstring>

#include "common.h"
#include "registry.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "mulact C++ CPU kernels (raw-pointer interface; call through mulact.ops)";
  auto& all = mulact::binders();
  // Registration order follows link order; sort so the module looks the same everywhere.
  std::sort(all.begin(), all.end(),
            [](const auto& a, const auto& b) { return std::strcmp(a.first, b.first) < 0; });
  pybind11::list ops;
  for (auto& [name, bind] : all) {
    bind(m);
    ops.append(name);
  }
  m.attr("ops") = ops;
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  m.def("num_threads", &mulact::num_threads, "Threads an OpenMP parallel region will use.");
}
