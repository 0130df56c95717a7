# Finds the CUDA toolkit libraries (cudart, NCCL) for sherd's CUDA targets.
# Included from every directory that builds one; safe to include repeatedly.
#
# Why the IMPORTED_GLOBAL dance: find_package(CUDAToolkit) creates directory-
# scoped imported targets, but sherd_cuda_runtime / sherd_nccl_collective
# carry them in their link interface to consumers in other directories
# (tests/, bench/, later the server). Promoting them in the directory that
# first found them makes them visible everywhere.
#
# Defines (when found): CUDA::cudart_static, sherd_nccl_lib (imported shared
# library), SHERD_NCCL_FOUND.
find_package(CUDAToolkit QUIET)
if(CUDAToolkit_FOUND)
  foreach(_t cudart_static cudart_static_deps toolkit)
    if(TARGET CUDA::${_t})
      get_property(_global TARGET CUDA::${_t} PROPERTY IMPORTED_GLOBAL)
      if(NOT _global)
        set_property(TARGET CUDA::${_t} PROPERTY IMPORTED_GLOBAL TRUE)
      endif()
    endif()
  endforeach()
endif()

if(NOT TARGET sherd_nccl_lib)
  find_path(SHERD_NCCL_INCLUDE_DIR nccl.h
    HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  find_library(SHERD_NCCL_LIBRARY NAMES nccl
    HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
  if(SHERD_NCCL_INCLUDE_DIR AND SHERD_NCCL_LIBRARY)
    add_library(sherd_nccl_lib SHARED IMPORTED GLOBAL)
    set_target_properties(sherd_nccl_lib PROPERTIES
      IMPORTED_LOCATION "${SHERD_NCCL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${SHERD_NCCL_INCLUDE_DIR}")
  endif()
endif()
if(TARGET sherd_nccl_lib AND TARGET CUDA::cudart_static)
  set(SHERD_NCCL_FOUND ON)
else()
  set(SHERD_NCCL_FOUND OFF)
endif()
