# CMake package file for rdag: find_package(rdag) gives rdag::rdag (shared) and rdag::rdag_static.

####### Expanded from @PACKAGE_INIT@ by configure_package_config_file() #######
####### Any changes to this file will be overwritten by the next CMake run ####
####### The input file was rdagConfig.cmake.in                            ########

get_filename_component(PACKAGE_PREFIX_DIR "${CMAKE_CURRENT_LIST_DIR}/../../../" ABSOLUTE)

macro(set_and_check _var _file)
  set(${_var} "${_file}")
  if(NOT EXISTS "${_file}")
    message(FATAL_ERROR "File or directory ${_file} referenced by variable ${_var} does not exist !")
  endif()
endmacro()

macro(check_required_components _NAME)
  foreach(comp ${${_NAME}_FIND_COMPONENTS})
    if(NOT ${_NAME}_${comp}_FOUND)
      if(${_NAME}_FIND_REQUIRED_${comp})
        set(${_NAME}_FOUND FALSE)
      endif()
    endif()
  endforeach()
endmacro()

####################################################################################
include(CMakeFindDependencyMacro)
find_dependency(Threads)
find_dependency(PkgConfig)
# The static library's private dependencies, under the names its exported targets use.
if(NOT TARGET PkgConfig::LIBFABRIC)
  pkg_check_modules(LIBFABRIC REQUIRED IMPORTED_TARGET libfabric)
endif()
if(NOT TARGET PkgConfig::IBVERBS)
  pkg_check_modules(IBVERBS REQUIRED IMPORTED_TARGET libibverbs)
endif()
if(NOT TARGET PkgConfig::RDMACM)
  pkg_check_modules(RDMACM REQUIRED IMPORTED_TARGET librdmacm)
endif()
if(ON)
  find_dependency(CUDAToolkit)
endif()
include("${CMAKE_CURRENT_LIST_DIR}/rdagTargets.cmake")
check_required_components(rdag)
