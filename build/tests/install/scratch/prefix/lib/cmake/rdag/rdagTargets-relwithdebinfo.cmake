#----------------------------------------------------------------
# Generated CMake target import file for configuration "RelWithDebInfo".
#----------------------------------------------------------------

# Commands may need to know the format version.
set(CMAKE_IMPORT_FILE_VERSION 1)

# Import target "rdag::rdag" for configuration "RelWithDebInfo"
set_property(TARGET rdag::rdag APPEND PROPERTY IMPORTED_CONFIGURATIONS RELWITHDEBINFO)
set_target_properties(rdag::rdag PROPERTIES
  IMPORTED_LOCATION_RELWITHDEBINFO "${_IMPORT_PREFIX}/lib/librdag.so.0.1.0"
  IMPORTED_SONAME_RELWITHDEBINFO "librdag.so.0"
  )

list(APPEND _cmake_import_check_targets rdag::rdag )
list(APPEND _cmake_import_check_files_for_rdag::rdag "${_IMPORT_PREFIX}/lib/librdag.so.0.1.0" )

# Import target "rdag::rdag_static" for configuration "RelWithDebInfo"
set_property(TARGET rdag::rdag_static APPEND PROPERTY IMPORTED_CONFIGURATIONS RELWITHDEBINFO)
set_target_properties(rdag::rdag_static PROPERTIES
  IMPORTED_LINK_INTERFACE_LANGUAGES_RELWITHDEBINFO "C"
  IMPORTED_LOCATION_RELWITHDEBINFO "${_IMPORT_PREFIX}/lib/librdag.a"
  )

list(APPEND _cmake_import_check_targets rdag::rdag_static )
list(APPEND _cmake_import_check_files_for_rdag::rdag_static "${_IMPORT_PREFIX}/lib/librdag.a" )

# Commands beyond this point should not need to know the version.
set(CMAKE_IMPORT_FILE_VERSION)
