# cmake -DBUILD_DIR=<sae build tree> -DPREFIX=<scratch prefix> [-DCONFIG=<config>] -P install.cmake
#
# Installs sae from BUILD_DIR into a fresh PREFIX (the fixture of the find_package test) and
# checks what was installed: the package files are there, and the exported target carries no
# path of the build or source tree and none of the flags sae uses for its own programs.
foreach(var BUILD_DIR PREFIX)
  if(NOT ${var})
    message(FATAL_ERROR "install.cmake: ${var} is not set")
  endif()
endforeach()

file(REMOVE_RECURSE "${PREFIX}")
unset(ENV{DESTDIR})
set(config_args)
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
execute_process(
  COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args}
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} failed: ${result}")
endif()

set(package_dir "${PREFIX}/share/cmake/sae")
foreach(file
    "${package_dir}/saeConfig.cmake"
    "${package_dir}/saeConfigVersion.cmake"
    "${package_dir}/saeTargets.cmake"
    "${PREFIX}/include/sae/core/config.hpp")
  if(NOT EXISTS "${file}")
    message(FATAL_ERROR "not installed: ${file}")
  endif()
endforeach()

file(GLOB target_files "${package_dir}/sae*Targets*.cmake")
get_filename_component(source_dir "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
foreach(file IN LISTS target_files)
  file(READ "${file}" targets)
  foreach(leak "${BUILD_DIR}" "${source_dir}" sae_project_options -march -fsanitize -Werror)
    string(FIND "${targets}" "${leak}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "${file} mentions '${leak}'")
    endif()
  endforeach()
endforeach()
message(STATUS "sae installed into ${PREFIX}")
