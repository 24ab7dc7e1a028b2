# CMake generated Testfile for 
# Source directory: /work/main/tests/unit
# Build directory: /work/main/build/tests/unit
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
add_test(test_err "/work/main/build/tests/unit/test_err")
set_tests_properties(test_err PROPERTIES  LABELS "unit" SKIP_RETURN_CODE "77" TIMEOUT "120" _BACKTRACE_TRIPLES "/work/main/tests/CMakeLists.txt;10;add_test;/work/main/tests/unit/CMakeLists.txt;2;rdag_add_unit_test;/work/main/tests/unit/CMakeLists.txt;0;")
