# Injected into CrispASR's own top-level configure with -DCMAKE_PROJECT_INCLUDE=<this file> (bench/peer_crispasr.py):
# once CrispASR's CMakeLists.txt has defined its targets, adds the two bench/peer_crispasr.py times. The peer's
# Canary-Qwen library (target canary_qwen: src/canary_qwen.cpp, its core and its ggml) driven by
# peer_canary_qwen.cpp (ours: load, per-clip transcription, peak RSS), and the peer's own GGUF quantizer
# (examples/crispasr-quantize/main.cpp). Nothing else of the peer's ~110 libraries is compiled.
get_property(_nemo_lite_peer_seen GLOBAL PROPERTY NEMO_LITE_PEER_INCLUDED)
if (NOT _nemo_lite_peer_seen)
    set_property(GLOBAL PROPERTY NEMO_LITE_PEER_INCLUDED TRUE)
    set(NEMO_LITE_PEER_DIR ${CMAKE_CURRENT_LIST_DIR} CACHE INTERNAL "")
    function(nemo_lite_peer_targets)
        add_executable(peer-canary-qwen ${NEMO_LITE_PEER_DIR}/peer_canary_qwen.cpp)
        target_link_libraries(peer-canary-qwen PRIVATE canary_qwen)
        target_compile_features(peer-canary-qwen PRIVATE cxx_std_17)

        add_executable(peer-quantize ${CMAKE_SOURCE_DIR}/examples/crispasr-quantize/main.cpp
                       ${CMAKE_SOURCE_DIR}/examples/common-ggml.cpp)
        target_include_directories(peer-quantize PRIVATE ${CMAKE_SOURCE_DIR}/examples)
        find_package(Threads REQUIRED)
        target_link_libraries(peer-quantize PRIVATE ggml ggml-base Threads::Threads)
        target_compile_features(peer-quantize PRIVATE cxx_std_17)
    endfunction()
    cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL nemo_lite_peer_targets)
endif()
