# CMake generated Testfile for 
# Source directory: /work/main/tests/install
# Build directory: /work/main/build/tests/install
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
add_test(install_consumer "/work/main/tests/install/check-install.sh" "/work/main/build" "/work/main/tests/install/consumer" "/work/main/build/tests/install/scratch" "/usr/bin/cc")
set_tests_properties(install_consumer PROPERTIES  LABELS "install" TIMEOUT "300" _BACKTRACE_TRIPLES "/work/main/tests/install/CMakeLists.txt;3;add_test;/work/main/tests/install/CMakeLists.txt;0;")
