// Each op's translation unit registers its bindings here, so adding an op never touches a
// central file: `MULACT_REGISTER(region_reduce) { m.def(...); }` in csrc/region_reduce.cpp.
#pragma once
#include <pybind11/pybind11.h>

#include <functional>
#include <utility>
#include <vector>

namespace mulact {

using Binder = std::function<void(pybind11::module_&)>;

// A function-local static: safe against the unspecified order of static initialisers
// across translation units.
inline std::vector<std::pair<const char*, Binder>>& binders() {
  static std::vector<std::pair<const char*, Binder>> all;
  return all;
}

struct Registration {
  Registration(const char* name, Binder fn) { binders().emplace_back(name, std::move(fn)); }
};

}  // namespace mulact

#define MULACT_REGISTER(stem)                                                      \
  static void mulact_bind_##stem(pybind11::module_& m);                            \
  static ::mulact::Registration mulact_registration_##stem(#stem, mulact_bind_##stem); \
  static void mulact_bind_##stem(pybind11::module_& m)
