# CTest InstallAndConsume: installs this build's library into a scratch prefix, builds
# examples/cpp against it as another project would (find_package(flashprefill CONFIG)), and runs
# the example, which checks paged chunked prefill against dense attention on the CPU (and on CUDA
# where a device is visible).
# Arguments (-D): BUILD_DIR, SOURCE_DIR, WORK_DIR, GENERATOR, CXX_COMPILER, CUDA_COMPILER (may be empty).
file(REMOVE_RECURSE "${WORK_DIR}")
function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message(STATUS "${what}:\n${out}${err}")
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "${what} failed (exit ${status})")
  endif()
endfunction()
run_step("install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
set(cuda_arg "")
if(CUDA_COMPILER)
  set(cuda_arg "-DCMAKE_CUDA_COMPILER=${CUDA_COMPILER}")
endif()
run_step("configure the example" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}/examples/cpp" -B "${WORK_DIR}/build"
         -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" ${cuda_arg}
         "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
run_step("build the example" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run_step("run the example" "${WORK_DIR}/build/paged_prefill" all)
