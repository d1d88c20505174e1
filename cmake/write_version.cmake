# Writes the version source file with the git commit of the source tree.
# Runs at every build (see the lstm_version target), so --version and
# summary.json name the commit that was built, not the one that was configured.
# configure_file() leaves OUTPUT untouched when its text would not change,
# so an unchanged commit rebuilds nothing.
#
# Expects -DSOURCE_DIR=... -DINPUT=... -DOUTPUT=... -DPROJECT_VERSION=...
execute_process(COMMAND git rev-parse --short=12 HEAD
                WORKING_DIRECTORY ${SOURCE_DIR}
                OUTPUT_VARIABLE LSTM_GIT_COMMIT OUTPUT_STRIP_TRAILING_WHITESPACE
                ERROR_QUIET RESULT_VARIABLE git_result)
if(NOT git_result EQUAL 0 OR LSTM_GIT_COMMIT STREQUAL "")
  set(LSTM_GIT_COMMIT "unknown")
else()
  # Tracked files that differ from the commit make the build "-dirty".
  execute_process(COMMAND git status --porcelain --untracked-files=no
                  WORKING_DIRECTORY ${SOURCE_DIR}
                  OUTPUT_VARIABLE git_changes ERROR_QUIET RESULT_VARIABLE status_result)
  if(status_result EQUAL 0 AND NOT git_changes STREQUAL "")
    string(APPEND LSTM_GIT_COMMIT "-dirty")
  endif()
endif()
configure_file(${INPUT} ${OUTPUT} @ONLY)
