# CMake generated Testfile for 
# Source directory: /work/main
# Build directory: /work/main/build
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
subdirs("src")
subdirs("fabric")
subdirs("gpu")
subdirs("tools")
subdirs("examples")
subdirs("perf")
subdirs("tests")
