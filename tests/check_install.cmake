# Installs the project into a fresh prefix and checks that every tool lands in
# PREFIX/bin and runs from there, printing the version and the git commit.
#
# Expects -DBINARY_DIR=<build tree> -DPREFIX=<scratch prefix> -DVERSION=<project version>
file(REMOVE_RECURSE ${PREFIX})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${PREFIX}
                RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BINARY_DIR} --prefix ${PREFIX} failed (${result}):\n${output}")
endif()
foreach(tool lstm-train lstm-eval lstm-generate lstm-gradflow)
  set(path ${PREFIX}/bin/${tool})
  if(NOT EXISTS ${path})
    message(FATAL_ERROR "${tool} is not installed at ${path}")
  endif()
  execute_process(COMMAND ${path} --version RESULT_VARIABLE result OUTPUT_VARIABLE version
                  ERROR_VARIABLE error OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${path} --version exited with ${result}: ${error}")
  endif()
  if(NOT version MATCHES "^lstm-lm ${VERSION} \\(git ([0-9a-f]+(-dirty)?|unknown)\\)$")
    message(FATAL_ERROR "${path} --version printed \"${version}\", expected \"lstm-lm ${VERSION} (git COMMIT)\"")
  endif()
  message(STATUS "${path}: ${version}")
endforeach()
file(REMOVE_RECURSE ${PREFIX})
